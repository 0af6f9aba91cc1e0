"""Countdown: combine the given numbers with + - * / to reach a target.

The reasoning benchmark of TinyZero, used by "Evolution Strategies at Scale" (arXiv 2509.24372).
As in TinyZero's verifier, every given number must be used exactly once. Instances are generated
solvable by construction; answers are checked by `problems._answers.evaluate_expression` (an `ast`
whitelist evaluated with exact fractions, never `eval`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

from gfo.errors import ConfigError, GfoError
from gfo_llm.config import LLMConfig
from gfo_llm.task import Example, lazy_problem
from problems._answers import MAX_COMPLETION_CHARS, evaluate_expression
from problems._generated import GeneratedConfig, GeneratedTask

PROMPT = (
    "Using the numbers {numbers}, write an arithmetic expression that equals {target}. Use each number "
    "exactly once, with + - * / and parentheses. Think briefly, then give only the expression inside "
    "<answer></answer> tags, for example <answer>(1 + 2) * 3</answer>."
)
_EXPRESSION_CHARS = frozenset("0123456789+-−*/×÷()=. \t")


@dataclass(frozen=True)
class CountdownConfig(GeneratedConfig):
    """Countdown settings on top of the shared LLM settings."""

    min_numbers: int = field(default=3, metadata={"help": "fewest given numbers per item"})
    max_numbers: int = field(default=4, metadata={"help": "most given numbers per item"})
    max_number: int = field(default=100, metadata={"help": "given numbers are drawn from 1 .. max_number"})
    max_target: int = field(default=100, metadata={"help": "targets lie in 1 .. max_target"})
    format_bonus: float = field(
        default=0.0, metadata={"help": "added to the reward when the answer is inside <answer></answer> tags"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.min_numbers <= self.max_numbers <= 6:
            raise ConfigError(
                "problem.min_numbers and problem.max_numbers must satisfy 2 <= min <= max <= 6; "
                f"got {self.min_numbers} and {self.max_numbers}, use 3 and 4"
            )
        if not 2 <= self.max_number <= 10_000:
            raise ConfigError(f"problem.max_number must be in [2, 10000]; got {self.max_number}, use 100")
        if not 1 <= self.max_target <= 1_000_000:
            raise ConfigError(f"problem.max_target must be in [1, 1000000]; got {self.max_target}, use 100")


class Countdown(GeneratedTask):
    """Reach the target with the given numbers; reward 1 for a valid expression equal to it."""

    name: ClassVar[str] = "countdown"
    Config: ClassVar[type[LLMConfig]] = CountdownConfig
    config: CountdownConfig

    def prompt(self, example: Example) -> str:
        return PROMPT.format(numbers=list(example["numbers"]), target=example["target"])

    def reward(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
        rewards = []
        for text, example in zip(completions, examples, strict=True):
            expression, tagged = extract_expression(text)
            correct = expression is not None and is_solution(
                expression, example["numbers"], example["target"]
            )
            rewards.append(float(correct) + (self.config.format_bonus if tagged else 0.0))
        return rewards

    def reference(self, example: Example) -> str:
        return f"<answer>{example['solution']}</answer>"

    def _key(self, row: dict[str, Any]) -> Any:
        return _key(row)

    def _generate(self, size: int, rng: random.Random, seen: set[Any]) -> list[dict[str, Any]]:
        cfg = self.config
        rows: list[dict[str, Any]] = []
        for _ in range(200 * size):  # bounded: tiny number ranges cannot yield many distinct items
            if len(rows) == size:
                return rows
            count = rng.randint(cfg.min_numbers, cfg.max_numbers)
            numbers = [rng.randint(1, cfg.max_number) for _ in range(count)]
            target, solution = _combine(numbers, rng)
            row = {"numbers": numbers, "target": target, "solution": solution}
            if 1 <= target <= cfg.max_target and _key(row) not in seen:
                seen.add(_key(row))
                rows.append(row)
        raise GfoError(
            f"could not generate {size} distinct countdown items; raise problem.max_number or "
            "problem.max_target, or lower problem.train_size/test_size"
        )


__getattr__ = lazy_problem(__name__, Countdown)


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (*sorted(row["numbers"]), row["target"])


def _combine(numbers: list[int], rng: random.Random) -> tuple[int, str]:
    """A random expression using each number once, with positive integer intermediate values."""
    items = [(n, str(n), "") for n in numbers]  # (value, text, top-level operator; "" for a number)
    while len(items) > 1:
        (a, ea, opa), (b, eb, opb) = (items.pop(rng.randrange(len(items))) for _ in range(2))
        if a < b:  # keep intermediates positive: subtract and divide the larger by the smaller
            (a, ea, opa), (b, eb, opb) = (b, eb, opb), (a, ea, opa)
        op = rng.choice(["+", "*"] + (["-"] if a > b else []) + (["/"] if a % b == 0 else []))
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        items.append((value, f"{_operand(ea, opa, op, False)} {op} {_operand(eb, opb, op, True)}", op))
    return items[0][0], items[0][1]


def _operand(text: str, inner: str, outer: str, right: bool) -> str:
    """Parenthesize only where precedence needs it, so references read like a person's answer."""
    rank = {"+": 1, "-": 1, "*": 2, "/": 2}
    if inner and (rank[inner] < rank[outer] or (right and rank[inner] == rank[outer] and outer in "-/")):
        return f"({text})"
    return text


def extract_expression(text: str) -> tuple[str | None, bool]:
    """(expression, tagged): the first `<answer>...</answer>`, else the last expression-like line.

    A trailing `= N` and a final period are dropped; ×, ÷ and − read as *, / and -. Linear time: plain
    `str.find` and a backward character scan, no backtracking regex over model text.
    """
    if not isinstance(text, str) or len(text) > MAX_COMPLETION_CHARS:
        return None, False
    start = text.find("<answer>")
    end = text.find("</answer>", start + len("<answer>")) if start >= 0 else -1
    if end >= 0:
        return _clean(text[start + len("<answer>") : end]), True
    for line in reversed(text.splitlines()):
        i = len(line)
        while i > 0 and line[i - 1] in _EXPRESSION_CHARS:
            i -= 1
        candidate = _clean(line[i:])
        if candidate and any(op in candidate for op in "+-*/") and any(c.isdigit() for c in candidate):
            return candidate, False
    return None, False


def _clean(candidate: str) -> str | None:
    candidate = candidate.strip().rstrip(".").strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    return candidate.split("=", 1)[0].strip() or None


def is_solution(expression: str, numbers: Sequence[int], target: int) -> bool:
    """True if the expression uses each of `numbers` exactly once and equals `target` exactly."""
    result = evaluate_expression(expression)
    if result is None:
        return False
    value, literals = result
    return Counter(literals) == Counter(numbers) and value == Fraction(target)
