"""Every registered algorithm, problem and task passes the suites a plug-in runs (`gfo.testing`,
`gfo_llm.testing`): the same classes, parametrized over the registries.

Configs are the defaults made small through the fields they have (a dimension, split sizes, the
tiny model for an LLM problem), so no check branches on a name. LLM problems run on the tiny random
model; their rewards are 0 on real tasks, which tests/test_llm_problem.py makes up for with a task
whose reward tells random completions apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch

from gfo.problem import Context, Evaluation
from gfo.registry import ALGORITHMS, PROBLEMS
from gfo.testing import AlgorithmConformance, ProblemConformance
from gfo.testing._problem import CONTEXT
from gfo.threads import one_thread
from gfo_llm.config import LLMConfig
from gfo_llm.problem import LLMProblem
from gfo_llm.testing import CANARY, TaskConformance
from problems.arithmetic import Arithmetic, ArithmeticConfig
from problems.functions import FunctionConfig, Sphere

ALGOS = ALGORITHMS.names()
PROBLEM_NAMES = PROBLEMS.names()
TASKS = {name: cls.task_class for name in PROBLEM_NAMES if issubclass(cls := PROBLEMS.get(name), LLMProblem)}
# Small versions of the defaults, for whichever config has the field.
SMALL = {"dim": 5, "train_size": 40, "test_size": 10}  # dim 5: a test function's and a BBOB dimension
TINY_LLM = {
    "dtype": "fp32",
    "max_new_tokens": 4,
    "batch_size": 2,
    "rank": 2,
    "eval_every": 1,
    "eval_limit": 2,
}
#: Problems whose package is an optional extra: skipped, saying so, where it is missing.
EXTRAS = {"bbob": "cocoex"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Around the class-scoped problems too: a tiny model's matrices gain nothing from threads.
    with one_thread():
        yield


def small_config(config_cls: type, request: pytest.FixtureRequest, *, model: bool) -> Any:
    """`config_cls` with the SMALL fields it has; an LLM config also gets the tiny model if `model`."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    values: dict[str, Any] = {key: value for key, value in SMALL.items() if key in fields}
    if "data_dir" in fields:  # GSM8K's folder: skipped where the data is missing
        values["data_dir"] = str(request.getfixturevalue("gsm8k_data_dir"))
    if model and issubclass(config_cls, LLMConfig):
        values.update(TINY_LLM, model=str(request.getfixturevalue("tiny_model_dir")))
    return config_cls(**values)


def test_the_suites_see_every_builtin() -> None:
    """Params come from the registries: an empty one (stale package metadata) would check nothing."""
    assert {"es", "pgpe", "snes", "xnes", "cmaes", "sep-cmaes", "cem"} <= set(ALGOS)
    builtin_problems = {"sphere", "rastrigin", "rosenbrock", "ellipsoid", "bbob"}
    assert builtin_problems | {"gsm8k", "arithmetic", "countdown", "instruct"} <= set(PROBLEM_NAMES)
    assert {"gsm8k", "arithmetic", "countdown", "instruct"} <= set(TASKS)


class TestAlgorithms(AlgorithmConformance):
    @pytest.fixture(params=ALGOS)
    def algorithm_and_config(self, request: pytest.FixtureRequest) -> tuple[type, Any]:
        cls = ALGORITHMS.get(request.param)
        return cls, cls.Config()


class TestProblems(ProblemConformance):
    @pytest.fixture(scope="class", params=PROBLEM_NAMES)
    @classmethod
    def problem_and_config(cls, request: pytest.FixtureRequest) -> tuple[type, Any]:
        if request.param in EXTRAS:
            pytest.importorskip(EXTRAS[request.param], reason=f"{request.param} needs an optional extra")
        problem_cls = PROBLEMS.get(request.param)
        return problem_cls, small_config(problem_cls.Config, request, model=True)


class TestTasks(TaskConformance):
    @pytest.fixture(scope="class", params=list(TASKS))
    @classmethod
    def task_and_config(cls, request: pytest.FixtureRequest) -> tuple[type, Any]:
        task_cls = TASKS[request.param]
        return task_cls, small_config(task_cls.Config, request, model=False)


# ---------------------------------------------------------------- the suites catch what they promise


class RunsItsOutput(Arithmetic):
    """A reward that runs the completion (exactly what a task must never do)."""

    def reward(self, completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
        for text in completions:
            with contextlib.suppress(Exception):
                exec(text, {})  # the broken behaviour under test
        return super().reward(completions, examples)


class BatchDependent(Sphere):
    """Fitness that depends on the rest of the population: a split changes it."""

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        x = population.double()
        return Evaluation(fitness=self.f(x - x.mean(0)))


def test_the_task_suite_catches_a_reward_that_runs_its_output() -> None:
    task = RunsItsOutput(ArithmeticConfig(train_size=4, test_size=2))
    examples = {split: list(task.examples(split)) for split in task.splits}
    with pytest.raises(AssertionError, match="ran a completion as code"):
        TaskConformance().test_model_output_is_data_never_code(task, examples)
    assert CANARY  # it did run: the canary is what caught it


def test_the_problem_suite_catches_fitness_that_depends_on_the_batch() -> None:
    problem = BatchDependent(FunctionConfig(dim=3))
    population = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    evaluation = problem.evaluate(population, CONTEXT)
    with pytest.raises(AssertionError):
        ProblemConformance().test_splitting_the_population_gives_the_same_fitness(
            problem, population, evaluation
        )
