"""Procedural arithmetic ("12 + 7 - 3"): offline, seeded, with partial credit for small models.

Level 1 (2-3 terms of 1-2 digits, + and -) is where the bundled 135M model has a usable signal
on CPU (its greedy accuracy: docs/tasks.md); levels 2 and 3 are harder for larger models. Partial
credit is opt-in and stays below 1, so that accuracy (reward >= 1) is still the exact answer:
`problem.format_bonus` for the `#### N` line, `problem.step_credit` for the worked steps a wrong
answer got right, each checked by computing it (a process reward that needs no reference text).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from gfo.errors import ConfigError, GfoError
from gfo_llm.config import LLMConfig
from gfo_llm.task import Example, lazy_problem
from problems._answers import (
    ANSWER_LINE,
    MAX_COMPLETION_CHARS,
    MAX_DIGITS,
    evaluate_expression,
    numeric_rewards,
)
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
    step_credit: float = field(
        default=0.0,
        metadata={
            "help": "reward of a wrong answer whose worked steps ('12 + 7 = 19', '19 - 3 = 16') are all"
            " right, in proportion to the right ones (0: exact answers only; level 1's + and - only)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.level not in LEVELS:
            raise ConfigError(
                f"problem.level must be one of 1, 2, 3; got {self.level}, use 1 for small models"
            )
        if not 0.0 <= self.step_credit < 1.0:
            raise ConfigError(
                f"problem.step_credit must be in [0, 1); got {self.step_credit}, use 0 (off) or e.g. 0.5"
                " (below 1, so that only an exact answer counts as correct)"
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
        rewards = numeric_rewards(completions, targets, self.config.format_bonus)
        if self.config.step_credit:
            for i, (text, example) in enumerate(zip(completions, examples, strict=True)):
                if rewards[i] < 1.0:
                    rewards[i] += self.config.step_credit * steps_right(text, example["expression"])
        return rewards

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


def _chain(expression: str) -> list[tuple[int, str, int, int]] | None:
    """ "12 + 7 - 3" -> [(12, "+", 7, 19), (19, "-", 3, 16)]: the left-to-right steps of + and - of
    integers; None for any other expression."""
    tokens = expression.split()
    if (
        len(tokens) < 3
        or any(op not in "+-" for op in tokens[1::2])
        or not all(t.isdigit() for t in tokens[::2])
    ):
        return None
    total, steps = int(tokens[0]), []
    for op, term in zip(tokens[1::2], map(int, tokens[2::2]), strict=True):
        new = total + term if op == "+" else total - term
        steps.append((total, op, term, new))
        total = new
    return steps


def _steps(expression: str) -> list[str]:
    """ "12 + 7 - 3" -> ["12 + 7 = 19", "19 - 3 = 16"]; one line for anything but + and - of integers."""
    chain = _chain(expression)
    if chain is None:
        result = evaluate_expression(expression)
        return [f"{expression} = {int(result[0]) if result else '?'}"]
    return [f"{left} {op} {term} = {new}" for left, op, term, new in chain]


_INT = rf"-?[0-9]{{1,{MAX_DIGITS}}}"
_EQUATION_RE = re.compile(
    rf"(?<![0-9.])({_INT})[ \t]*([+-])[ \t]*([0-9]{{1,{MAX_DIGITS}}})[ \t]*=[ \t]*({_INT})(?![0-9.])"
)


def steps_right(text: str, expression: str) -> float:
    """The fraction of `expression`'s operations (+ and - of integers, left to right) that `text` works
    out correctly, as `_steps` writes them: "12 + 7 - 3" -> "12 + 7 = 19", then "19 - 3 = 16".

    Each step is the first later equation in the text with the step's operator and term whose left
    side is the previous step's written result (the first term for the first step); the text is read
    until a step is missing. A step with a wrong result does not spoil the next one, which is judged
    from the result written. Another kind of expression, or an over-long text, gives 0.
    """
    chain = _chain(expression)
    if chain is None or not isinstance(text, str) or len(text) > MAX_COMPLETION_CHARS:
        return 0.0
    equations = [(int(a), op, int(b), int(c)) for a, op, b, c in _EQUATION_RE.findall(text)]
    left, right, at = chain[0][0], 0, 0
    for _, op, term, _ in chain:
        found = next((i for i in range(at, len(equations)) if equations[i][:3] == (left, op, term)), None)
        if found is None:
            break
        written = equations[found][3]
        right += written == (left + term if op == "+" else left - term)
        left, at = written, found + 1
    return right / len(chain)


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
