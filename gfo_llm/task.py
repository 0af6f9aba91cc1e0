"""The small API a reward task implements; everything model-related lives elsewhere in gfo_llm."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from gfo.errors import ConfigError, GfoError
from gfo_llm.config import LLMConfig

Example = Mapping[str, Any]


class Task(ABC):
    """A task with a verifiable reward.

    A subclass names its config (a frozen dataclass extending `LLMConfig` with the task's own
    keys) and implements three methods; `__init__` refuses a config of any other type. It never
    touches a model: `gfo_llm` turns a task into a `gfo.Problem` with `LLMProblem.for_task`.
    """

    name: ClassVar[str]
    Config: ClassVar[type[LLMConfig]] = LLMConfig
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    #: Regular expressions on a completion's text: generation stops at the shortest prefix that
    #: matches one (e.g. a finished answer line), saving the tokens a reward never reads.
    stop: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: LLMConfig) -> None:
        wanted = type(self).Config
        if not isinstance(config, wanted):
            owner = type(self).__name__
            article = "an" if owner[0] in "AEIOU" else "a"
            raise ConfigError(
                f"{self.name} needs {article} {owner}.Config, got {type(config).__name__}; "
                f"use {owner}.Config()"
            )
        self.config = config

    @abstractmethod
    def examples(self, split: str) -> Sequence[Example]:
        """All examples of a split ("train" or "test"), in a fixed order."""

    @abstractmethod
    def prompt(self, example: Example) -> str:
        """The user message for an example; the model's chat template is applied by gfo_llm."""

    @abstractmethod
    def reward(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        """Pure batch reward: one float per completion, higher is better, never raises on bad text."""

    def reference(self, example: Example) -> str | None:
        """A reference completion for supervised warm start (`gfo sft`); None if the task has none."""
        return None

    def breakdown(self, completions: Sequence[str], examples: Sequence[Example]) -> dict[str, Any] | None:
        """What the reward alone cannot show about scored answers (`gfo learn` reports it for the base,
        start and final models): e.g. per-check counts, answers that loop, their median length.
        None (the default) when the task has nothing to add. Values must be JSON-serializable."""
        return None


def reference_completion(task: Task, example: Example, eos: str, needed_by: str) -> str:
    """What `gfo sft` trains on and `problem.fitness=likelihood` scores: the reference, then EOS.

    `needed_by` ends the error for a task without references: who needs them, and the way out.
    """
    reference = task.reference(example)
    if reference is None:
        raise GfoError(
            f"task {task.name!r} gives no reference completions (Task.reference returns None); {needed_by}"
        )
    return reference + eos


def lazy_problem(module: str, task: type[Task]) -> Callable[[str], Any]:
    """A module `__getattr__` that builds `Problem`, the gfo problem of `task`, on first use.

    A task module sets `__getattr__ = lazy_problem(__name__, MyTask)` so that its registry target
    ("problems.mytask:Problem") resolves, while importing the module (to list tasks, for `--help`)
    does not import `gfo_llm.problem` and with it torch and transformers.
    """

    def __getattr__(name: str) -> Any:
        if name == "Problem":
            from gfo_llm.problem import LLMProblem

            problem = LLMProblem.for_task(task)
            vars(sys.modules[module])["Problem"] = problem  # built once: later lookups skip this
            return problem
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
