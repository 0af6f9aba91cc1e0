"""Fuzz every reward with untrusted text: it never raises, stays in [0, 1 + bonus] and is fast.

The default run is short; `GFO_FUZZ_EXAMPLES=5000 pytest tests/test_rewards_fuzz.py` fuzzes longer.
The deterministic worst cases (each of the same units repeated to 20,000 characters and to 1 MB)
are `gfo_llm.testing.TaskConformance`'s, applied to every registered task in test_conformance.py.
"""

from __future__ import annotations

import decimal
import operator
import os
import time
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfo_llm.task import Task
from gfo_llm.testing import UNTRUSTED_UNITS as UNITS
from problems._answers import MAX_COMPLETION_CHARS, evaluate_expression, extract_answer, parse_number
from problems.arithmetic import Arithmetic, ArithmeticConfig
from problems.countdown import Countdown, CountdownConfig, extract_expression
from problems.gsm8k import GSM8K, GSM8KConfig
from problems.instruct import Instruct, InstructConfig

EXAMPLES = int(os.environ.get("GFO_FUZZ_EXAMPLES", "200"))
BONUS = 0.1
SECONDS_PER_CALL = 1.0
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # time is asserted explicitly, per call, below
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
# 9**9999 written out (9,542 digits); str(int) itself refuses more than 4,300 digits, Decimal does not.
HUGE_NUMBER = str(decimal.Context(prec=10_000).power(decimal.Decimal(9), 9999))


def _repeat(unit: str, count: int) -> str:
    return unit * count


adversarial = st.one_of(
    st.builds(_repeat, st.sampled_from(UNITS), st.integers(0, 1_200_000 // 3)),  # up to ~1 MB
    st.builds(_repeat, st.sampled_from(UNITS), st.integers(0, MAX_COMPLETION_CHARS // 2)),  # under the cap
    st.lists(st.sampled_from(UNITS), max_size=200).map("".join),
    st.sampled_from(
        [
            "(" * 100_000 + "1" + ")" * 100_000,
            "<answer>" + "(" * 5_000 + "1" + ")" * 5_000 + "</answer>",
            "<answer>" + "-" * 150 + "1</answer>",
            "<answer>" + "9" * 99 + " * " + "9" * 99 + "</answer>",
            "#### " + HUGE_NUMBER,
            "The answer is " + HUGE_NUMBER + ".",
            HUGE_NUMBER + " = " + HUGE_NUMBER,
            "1" + ",000" * 4_999,
            "x" * 1_000_000,
        ]
    ),
)
completions = st.one_of(st.text(max_size=2_000), adversarial, st.tuples(st.text(), adversarial).map("".join))


TASK_IDS = ["gsm8k", "arithmetic", "arithmetic-steps", "countdown", "instruct"]


def _tasks() -> list[tuple[Task, dict[str, Any]]]:
    return [
        (GSM8K(GSM8KConfig(format_bonus=BONUS)), {"question": "q", "answer": "#### 7", "target": "7"}),
        (Arithmetic(ArithmeticConfig(format_bonus=BONUS)), {"expression": "3 + 4", "target": 7}),
        (
            Arithmetic(ArithmeticConfig(format_bonus=BONUS, step_credit=0.9)),
            {"expression": "3 + 4 - 5", "target": 2},
        ),
        (Countdown(CountdownConfig(format_bonus=BONUS)), {"numbers": [1, 2, 4], "target": 7}),
        (
            Instruct(InstructConfig()),  # no format bonus: rewards lie in [0, 1]
            {
                "topic": "a rainy day",
                "instruction_id_list": ["detectable_format:json_format", "keywords:existence"],
                "kwargs": [{}, {"keywords": ["answer"]}],
            },
        ),
    ]


@pytest.mark.parametrize(("task", "example"), _tasks(), ids=TASK_IDS)
@FUZZ
@given(text=completions)
def test_reward_is_total_bounded_and_fast(task: Task, example: dict[str, Any], text: str) -> None:
    start = time.perf_counter()
    rewards = task.reward([text], [example])
    elapsed = time.perf_counter() - start
    assert len(rewards) == 1 and isinstance(rewards[0], float)
    assert 0.0 <= rewards[0] <= 1.0 + BONUS
    assert elapsed < SECONDS_PER_CALL, f"{elapsed:.2f} s on a {len(text)}-character completion"


@FUZZ
@given(text=completions)
def test_extractors_are_total(text: str) -> None:
    start = time.perf_counter()
    answer, strict = extract_answer(text)
    expression, tagged = extract_expression(text)
    evaluate_expression(text)
    parse_number(text)
    assert time.perf_counter() - start < SECONDS_PER_CALL
    assert isinstance(strict, bool) and isinstance(tagged, bool)
    if answer is not None:
        assert len(str(answer.numerator)) <= 41  # MAX_DIGITS digits plus a sign
    if expression is not None:
        assert len(expression) <= MAX_COMPLETION_CHARS


@FUZZ
@given(
    numbers=st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
    ops=st.lists(st.sampled_from(["+", "-", "*", "/", "**", "//", "%"]), min_size=7, max_size=7),
    wrap=st.booleans(),
)
def test_evaluate_expression_matches_exact_arithmetic(numbers: list[int], ops: list[str], wrap: bool) -> None:
    """Whitelisted expressions evaluate exactly; anything with another operator is refused."""
    text = str(numbers[0])
    for number, op in zip(numbers[1:], ops, strict=False):
        text = f"({text} {op} {number})" if wrap else f"{text} {op} {number}"
    result = evaluate_expression(text)
    used = ops[: len(numbers) - 1]
    if any(op in ("**", "//", "%") for op in used):
        assert result is None
    elif result is not None:
        assert result[1] == numbers
        if wrap:  # fully parenthesized: a left fold, computed here independently
            value = Fraction(numbers[0])
            for number, op in zip(numbers[1:], used, strict=True):
                value = _APPLY[op](value, Fraction(number))
            assert result[0] == value
    else:  # refused only for a division by zero or length
        assert "/ 0" in text or len(text) > 200
