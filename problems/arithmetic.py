"""Procedural arithmetic ("12 + 7 - 3"): offline, seeded, with a dense reward for small models.

Level 1 (2-3 terms of 1-2 digits, + and -) is where the bundled 135M model has a usable signal
on CPU (10-20% greedy, see MISSION.md); levels 2 and 3 are harder for larger models.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from gfo.errors import ConfigError, GfoError
from gfo_llm.config import LLMConfig
from gfo_llm.task import Example, lazy_problem
from problems._answers import ANSWER_LINE, evaluate_expression, numeric_rewards
from problems._generated import GeneratedConfig, GeneratedTask

PROMPT = 'Compute {expression}. Give the final answer on its own last line, in the form "#### <number>".'


class Level(NamedTuple):
    terms: tuple[int, int]  # inclusive range of the number of terms
    digits: int  # operands are drawn from 1 .. 10**digits - 1
    operators: str
    parentheses: bool  # wrap one run of terms in parentheses


LEVELS = {
    1: Level((2, 3), 2, "+-", False),
    2: Level((3, 4), 3, "+-*", False),
    3: Level((4, 5), 4, "+-*", True),
}


@dataclass(frozen=True)
class ArithmeticConfig(GeneratedConfig):
    """Arithmetic settings on top of the shared LLM settings."""

    level: int = field(
        default=1,
        metadata={"help": "1: 2-3 terms of 1-2 digits, + -; 2: 3-4 terms, 3 digits, *; 3: 4-5, 4, ()"},
    )
    format_bonus: float = field(
        default=0.0, metadata={"help": "added to the reward when the answer uses the strict '#### N' format"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.level not in LEVELS:
            raise ConfigError(
                f"problem.level must be one of 1, 2, 3; got {self.level}, use 1 for small models"
            )


class Arithmetic(GeneratedTask):
    """Evaluate an integer expression; reward 1 for the exact value."""

    name: ClassVar[str] = "arithmetic"
    Config: ClassVar[type[LLMConfig]] = ArithmeticConfig
    stop: ClassVar[tuple[str, ...]] = (ANSWER_LINE,)
    config: ArithmeticConfig

    def prompt(self, example: Example) -> str:
        return PROMPT.format(expression=example["expression"])

    def reward(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        targets = [example["target"] for example in examples]
        return numeric_rewards(completions, targets, self.config.format_bonus)

    def _stream(self) -> str:
        return f"arithmetic-{self.config.level}-{self.config.data_seed}"

    def _generate(self, size: int, rng: random.Random, seen: set[Any]) -> list[dict[str, Any]]:
        return _generate(LEVELS[self.config.level], size, rng, seen)

    def _key(self, row: dict[str, Any]) -> Any:
        return row["expression"]

    def reference(self, example: Example) -> str:
        """A worked answer for `gfo sft`: one line per operation, left to right, then `#### N`.

        A small model computes a 3-term sum more reliably one step at a time (chain of thought)
        than in one jump; with `*` or parentheses (levels 2, 3) the reference is a single line.
        """
        steps = _steps(example["expression"])
        return "\n".join([*steps, f"#### {example['target']}"])


__getattr__ = lazy_problem(__name__, Arithmetic)


def _steps(expression: str) -> list[str]:
    """ "12 + 7 - 3" -> ["12 + 7 = 19", "19 - 3 = 16"]; one line for anything but + and - of integers."""
    tokens = expression.split()
    if (
        len(tokens) < 3
        or any(op not in "+-" for op in tokens[1::2])
        or not all(t.isdigit() for t in tokens[::2])
    ):
        result = evaluate_expression(expression)
        return [f"{expression} = {int(result[0]) if result else '?'}"]
    total, lines = int(tokens[0]), []
    for op, term in zip(tokens[1::2], tokens[2::2], strict=True):
        new = total + int(term) if op == "+" else total - int(term)
        lines.append(f"{total} {op} {term} = {new}")
        total = new
    return lines


def _expression(level: Level, rng: random.Random) -> str:
    terms = [str(rng.randint(1, 10**level.digits - 1)) for _ in range(rng.randint(*level.terms))]
    if level.parentheses:
        start = rng.randrange(len(terms) - 1)
        end = rng.randrange(start + 1, len(terms) - (start == 0))  # not around the whole expression
        terms[start], terms[end] = "(" + terms[start], terms[end] + ")"
    text = terms[0]
    for term in terms[1:]:
        text += f" {rng.choice(level.operators)} {term}"
    return text


def _generate(
    level: Level, size: int, rng: random.Random, exclude: set[str] | frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seen = set(exclude)
    for _ in range(50 * size):  # bounded: level 1 has ~4M distinct items, far above MAX_ITEMS
        if len(rows) == size:
            return rows
        expression = _expression(level, rng)
        if expression in seen:
            continue
        seen.add(expression)
        result = evaluate_expression(expression)
        assert result is not None and result[0].denominator == 1  # only + - * of integers
        rows.append({"expression": expression, "target": int(result[0])})
    raise GfoError(f"could not generate {size} distinct arithmetic items; lower problem.train_size/test_size")
