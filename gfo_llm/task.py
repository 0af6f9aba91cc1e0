"""The small API a reward task implements; everything model-related lives elsewhere in gfo_llm."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gfo_llm.config import LLMConfig

Example = Mapping[str, Any]


class Task(ABC):
    """A task with a verifiable reward.

    A subclass names its config (a frozen dataclass extending `LLMConfig` with the task's own
    keys) and implements three methods. It never touches a model: `gfo_llm` turns a task into a
    `gfo.Problem` with `LLMProblem.for_task`.
    """

    name: ClassVar[str]
    Config: ClassVar[type[LLMConfig]] = LLMConfig
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    #: Regular expressions on a completion's text: generation stops at the shortest prefix that
    #: matches one (e.g. a finished answer line), saving the tokens a reward never reads.
    stop: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: LLMConfig) -> None:
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
