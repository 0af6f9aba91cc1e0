"""What tasks with items generated from a seed share (arithmetic, countdown, instruct): settings, splits."""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gfo.errors import ConfigError, GfoError
from gfo_llm.config import LLMConfig
from gfo_llm.task import Example, Task

MAX_ITEMS = 100_000


@dataclass(frozen=True)
class GeneratedConfig(LLMConfig):
    """Split sizes, the data seed and the optional format bonus of a generated task."""

    train_size: int = field(default=2000, metadata={"help": "number of training items"})
    test_size: int = field(default=500, metadata={"help": "number of held-out items (disjoint from train)"})
    data_seed: int = field(default=0, metadata={"help": "seed of the generated items (not of the search)"})
    format_bonus: float = field(
        default=0.0, metadata={"help": "added to the reward when the answer uses the task's strict format"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("train_size", "test_size"):
            size = getattr(self, name)
            if not 1 <= size <= MAX_ITEMS:
                raise ConfigError(f"problem.{name} must be in [1, {MAX_ITEMS}]; got {size}, use e.g. 500")
        if not 0.0 <= self.format_bonus <= 1.0:
            raise ConfigError(
                f"problem.format_bonus must be in [0, 1]; got {self.format_bonus}, use 0 (off) or e.g. 0.1"
            )


class GeneratedTask(Task):
    """A task whose train and test items are generated from `problem.data_seed`, disjoint.

    The test split comes first, from its own stream, so it does not change when train_size does;
    train is drawn from another stream and skips every test item.
    """

    config: GeneratedConfig

    def __init__(self, config: LLMConfig) -> None:
        super().__init__(config)
        self._examples: dict[str, list[dict[str, Any]]] = {}

    def examples(self, split: str) -> Sequence[Example]:
        if split not in self.splits:
            raise GfoError(f"{self.name} has no split {split!r}; use one of {', '.join(self.splits)}")
        if not self._examples:
            stream = self._stream()
            test = self._generate(self.config.test_size, random.Random(f"{stream}-test"), set())
            seen = {self._key(row) for row in test}
            train = self._generate(self.config.train_size, random.Random(f"{stream}-train"), seen)
            self._examples = {"test": test, "train": train}
        return self._examples[split]

    def _stream(self) -> str:
        """The seed of the items; each split appends its name."""
        return f"{self.name}-{self.config.data_seed}"

    @abstractmethod
    def _generate(self, size: int, rng: random.Random, seen: set[Any]) -> list[dict[str, Any]]:
        """`size` distinct items drawn with `rng`, none of whose keys is in `seen`."""

    @abstractmethod
    def _key(self, row: dict[str, Any]) -> Any:
        """What makes two items the same (and so never in both splits)."""
