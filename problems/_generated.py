"""Settings shared by tasks whose items are generated from a seed (arithmetic, countdown, instruct)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gfo.errors import ConfigError
from gfo_llm.config import LLMConfig

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
