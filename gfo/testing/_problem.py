"""The checks every problem passes, whoever wrote it."""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from gfo import checkpoint
from gfo.problem import Context, Evaluation, Problem
from gfo.testing._config import assert_config_conforms, subject

#: Not generation 0 or seed 0: a problem that ignores its context is not caught by them either way.
CONTEXT = Context(generation=2, seed=1)


class ProblemConformance:
    """Conformance suite for a `gfo.problem.Problem`: subclass it as `TestSomething` and set

    - `problem_cls`: the class, built as every problem is, `problem_cls(config)`;
    - `config`: the config to test it with (default: `problem_cls.Config()`).

    When the config needs other fixtures (a model directory, a data folder), override the
    fixture `problem_and_config` instead, returning `(problem_cls, config)`: class-scoped, so a
    classmethod under `@pytest.fixture(scope="class")`.

    One prepared problem is shared by the tests of a class, since preparing one can load a model.
    """

    problem_cls: ClassVar[type[Problem]]
    config: ClassVar[Any] = None
    #: Candidates per test population.
    popsize: ClassVar[int] = 3

    @pytest.fixture(scope="class")
    @classmethod
    def problem_and_config(cls) -> tuple[type[Problem], Any]:
        """The class under test and the config it is built with."""
        return subject(cls, "problem_cls", "problem_and_config")

    @pytest.fixture(scope="class")
    @classmethod
    def problem(cls, problem_and_config: tuple[type[Problem], Any]) -> Iterator[Problem]:
        """A prepared instance, shared by the class's tests and closed after them."""
        problem_cls, config = problem_and_config
        # `prepare` may change process-wide torch settings (gfo_llm turns autograd off for good):
        # the tests after this class must not inherit them.
        grad = torch.is_grad_enabled()
        problem = problem_cls(config)
        try:
            problem.prepare()
            yield problem
        finally:
            problem.close()
            torch.set_grad_enabled(grad)

    @pytest.fixture(scope="class")
    @classmethod
    def population(cls, problem: Problem) -> torch.Tensor:
        """`popsize` candidates drawn around the initial centre with the initial spread, seeded."""
        center = problem.initial_center()
        noise = torch.randn(
            cls.popsize,
            problem.solution_length,
            generator=torch.Generator().manual_seed(0),
            dtype=center.dtype,
        )
        return center + problem.initial_stdev * noise

    @pytest.fixture(scope="class")
    @classmethod
    def evaluation(cls, problem: Problem, population: torch.Tensor) -> Evaluation:
        return problem.evaluate(population, CONTEXT)

    # ------------------------------------------------------------------ declarations

    def test_declares_its_sense_and_a_frozen_config(
        self, problem_and_config: tuple[type[Problem], Any]
    ) -> None:
        cls, config = problem_and_config
        assert issubclass(cls, Problem)
        assert cls.sense in ("min", "max"), f"sense must be 'min' or 'max'; got {cls.sense!r}"
        assert_config_conforms(cls.Config, config, "problem")
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        assert set(cls.state_settings) <= fields, f"state_settings name no config field: {cls.state_settings}"

    def test_initial_center_matches_solution_length(self, problem: Problem) -> None:
        n = problem.solution_length
        assert isinstance(n, int) and n >= 1, f"solution_length must be a positive int; got {n!r}"
        center = problem.initial_center()
        assert isinstance(center, torch.Tensor) and center.shape == (n,), center.shape
        assert center.is_floating_point() and torch.isfinite(center).all()
        assert math.isfinite(problem.initial_stdev) and problem.initial_stdev > 0, problem.initial_stdev
        assert problem.default_popsize is None or problem.default_popsize >= 2, problem.default_popsize
        described = problem.describe()  # shown at start and merged into summary.json
        assert isinstance(described, dict) and all(isinstance(k, str) for k in described), described

    # ------------------------------------------------------------------ evaluation

    def test_evaluate_returns_finite_fitness_per_candidate(self, evaluation: Evaluation) -> None:
        assert isinstance(evaluation, Evaluation)
        fitness = evaluation.fitness
        assert isinstance(fitness, torch.Tensor) and fitness.shape == (self.popsize,), fitness
        assert fitness.is_floating_point() and torch.isfinite(fitness).all(), fitness
        for key, values in evaluation.info.items():
            assert isinstance(values, torch.Tensor) and values.shape == (self.popsize,), (key, values)
        for key, total in evaluation.counters.items():
            assert isinstance(total, float) and math.isfinite(total), (key, total)
        assert all(isinstance(sample, dict) for sample in evaluation.samples), evaluation.samples

    def test_same_context_gives_the_same_fitness(
        self, problem: Problem, population: torch.Tensor, evaluation: Evaluation
    ) -> None:
        """Everything an evaluation depends on besides the candidates is in its `Context`."""
        again = problem.evaluate(population, CONTEXT)
        assert torch.equal(again.fitness, evaluation.fitness), (again.fitness, evaluation.fitness)
        assert again.counters == evaluation.counters

    def test_splitting_the_population_gives_the_same_fitness(
        self, problem: Problem, population: torch.Tensor, evaluation: Evaluation
    ) -> None:
        """What workers do: each evaluates a slice, and the slices are joined (here: one candidate each)."""
        joined = Evaluation.concat([problem.evaluate(row[None], CONTEXT) for row in population])
        assert torch.equal(joined.fitness, evaluation.fitness), (joined.fitness, evaluation.fitness)
        assert joined.info.keys() == evaluation.info.keys()
        for key in evaluation.info:
            assert torch.equal(joined.info[key], evaluation.info[key]), key
        assert joined.counters.keys() == evaluation.counters.keys()
        for key, total in evaluation.counters.items():
            assert joined.counters[key] == pytest.approx(total, rel=1e-12), key

    def test_another_instance_agrees_and_has_the_same_fingerprint(
        self,
        problem_and_config: tuple[type[Problem], Any],
        problem: Problem,
        population: torch.Tensor,
        evaluation: Evaluation,
        tmp_path: Path,
    ) -> None:
        """Another worker (or a resumed run) builds its own instance from the config alone."""
        cls, config = problem_and_config
        other = cls(config)
        # Known before `prepare()`: a Ray driver never prepares, `gfo tune` sizes its search first.
        assert other.solution_length == problem.solution_length
        other.prepare()
        assert torch.equal(other.evaluate(population, CONTEXT).fitness, evaluation.fitness)
        fingerprint = problem.fingerprint()
        assert other.fingerprint() == fingerprint == problem.fingerprint()
        assert fingerprint["dim"] == problem.solution_length and fingerprint["class"], fingerprint
        # It is stored in every checkpoint, which loads plain values and tensors only.
        checkpoint.save(tmp_path, {"fingerprint": fingerprint})
        assert checkpoint.load(tmp_path)["fingerprint"] == fingerprint
        other.close()

    def test_close_is_safe_and_a_closed_problem_evaluates_again(
        self,
        problem_and_config: tuple[type[Problem], Any],
        population: torch.Tensor,
        evaluation: Evaluation,
    ) -> None:
        """The loop closes a problem however a run ends; a later evaluation prepares it again."""
        cls, config = problem_and_config
        other = cls(config)
        other.close()  # never prepared
        other.prepare()
        assert torch.equal(other.evaluate(population, CONTEXT).fitness, evaluation.fitness)
        other.close()
        other.close()  # twice
        assert torch.equal(other.evaluate(population, CONTEXT).fitness, evaluation.fitness)
        other.close()

    def test_a_driver_answers_from_a_workers_state(
        self,
        problem_and_config: tuple[type[Problem], Any],
        problem: Problem,
        population: torch.Tensor,
        tmp_path: Path,
    ) -> None:
        """In a Ray run only the workers prepare; the driver's instance adopts a worker's
        `driver_state()` (sent through pickle) and answers for it without `prepare()`."""
        cls, config = problem_and_config
        driver = cls(config)
        state = problem.driver_state()
        if state is not None:
            driver.adopt_driver_state(pickle.loads(pickle.dumps(state)))
        assert torch.equal(driver.initial_center(), problem.initial_center())
        assert driver.describe() == problem.describe()
        for name in ("driver", "worker"):
            (tmp_path / name).mkdir()
        ours = driver.export(population[0], tmp_path / "driver")
        theirs = problem.export(population[0], tmp_path / "worker")
        assert (ours is None) == (theirs is None)
        if ours is not None and theirs is not None:
            assert _files(ours) == _files(theirs), "the driver exports other bytes than a prepared problem"

    def test_heldout_scores_are_finite_and_deterministic(
        self, problem: Problem, population: torch.Tensor
    ) -> None:
        every = problem.heldout_every()
        assert isinstance(every, int) and every >= 0, every
        if every == 0:
            pytest.skip("no held-out evaluation (heldout_every() is 0)")
        solutions = torch.stack([problem.initial_center(), population[0]])
        result = problem.evaluate_heldout(solutions)
        # An Evaluation carries numbers about the first row beside the scores (`info`, per row).
        scores = result.fitness if isinstance(result, Evaluation) else result
        assert isinstance(scores, torch.Tensor) and scores.shape == (2,), scores
        assert scores.is_floating_point() and torch.isfinite(scores).all(), scores
        if isinstance(result, Evaluation):
            for name, values in result.info.items():
                assert values.shape == (2,) and torch.isfinite(values[0]), (name, values)
        again = problem.evaluate_heldout(solutions)
        assert torch.equal(again.fitness if isinstance(again, Evaluation) else again, scores)

    def test_export_writes_inside_the_run_directory(
        self, problem: Problem, population: torch.Tensor, tmp_path: Path
    ) -> None:
        written = problem.export(population[0], tmp_path)
        if written is not None:
            assert written.exists() and written.resolve().is_relative_to(tmp_path.resolve()), written


def _files(path: Path) -> dict[str, bytes]:
    """Every file under `path` (or `path` itself) by its relative name, with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
