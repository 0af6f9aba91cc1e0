"""`gfo.stats` on literal tables: values computed by hand (exact binomial sums, 40-digit Wilson)."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfo.stats import mcnemar_exact, paired_summary, wilson_interval

# (gained, lost) -> 2 * P(X <= min) for X ~ Bin(gained + lost, 1/2), capped at 1.
MCNEMAR = [
    ((0, 0), 1.0),  # no discordant pair: no evidence either way
    ((5, 0), 0.0625),  # 2 / 2^5
    ((0, 5), 0.0625),
    ((9, 4), 0.266845703125),  # 2 * (1 + 13 + 78 + 286 + 715) / 2^13
    ((4, 9), 0.266845703125),
    ((1, 1), 1.0),  # 2 * 3/4 = 1.5, capped
    ((1, 0), 1.0),
    ((6, 0), 0.03125),
    ((10, 2), 0.0385742187500),  # 2 * (1 + 12 + 66) / 4096
]

# (successes, n) -> Wilson 95% (z = 1.959963984540054), computed with 40-digit decimals.
WILSON = [
    ((0, 10), (0.0, 0.2775327998628892)),
    ((5, 10), (0.2365930905125640, 0.7634069094874360)),
    ((10, 10), (0.7224672001371108, 1.0)),
    ((3, 10), (0.1077912674063010, 0.6032218525388546)),
]


@pytest.mark.parametrize(("counts", "expected"), MCNEMAR, ids=str)
def test_mcnemar_exact_on_literal_tables(counts: tuple[int, int], expected: float) -> None:
    assert mcnemar_exact(*counts) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("counts", "expected"), WILSON, ids=str)
def test_wilson_on_literal_tables(counts: tuple[int, int], expected: tuple[float, float]) -> None:
    low, high = wilson_interval(*counts)
    assert low == pytest.approx(expected[0], abs=1e-6) and high == pytest.approx(expected[1], abs=1e-6)


def test_wilson_reaches_the_bounds_exactly_and_narrows_with_n() -> None:
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0
    widths = [(lambda ci: ci[1] - ci[0])(wilson_interval(n // 2, n)) for n in (10, 100, 1000)]
    assert widths[0] > widths[1] > widths[2]
    assert wilson_interval(5, 10, z=1.0)[1] < wilson_interval(5, 10)[1]  # a 68% interval is narrower


@given(st.integers(0, 60), st.integers(0, 60))
@settings(max_examples=100, deadline=None, database=None)
def test_mcnemar_matches_an_exact_rational_sum(gained: int, lost: int) -> None:
    n = gained + lost
    tail = sum(Fraction(math.comb(n, i), 2**n) for i in range(min(gained, lost) + 1))
    expected = 1.0 if n == 0 else float(min(Fraction(1), 2 * tail))
    p = mcnemar_exact(gained, lost)
    assert p == pytest.approx(expected, rel=1e-12) and p == mcnemar_exact(lost, gained)
    assert 0 < p <= 1


def test_paired_summary_counts_the_discordant_items() -> None:
    a = [True, True, True, False, False, True, False, True]
    b = [True, False, False, False, True, True, False, False]
    summary = paired_summary(a, b)
    assert set(summary) == {"acc_a", "acc_b", "ci_a", "ci_b", "gained", "lost", "n", "p_value"}
    assert summary["n"] == 8 and summary["gained"] == 3 and summary["lost"] == 1
    assert summary["acc_a"] == 5 / 8 and summary["acc_b"] == 3 / 8
    assert summary["acc_a"] - summary["acc_b"] == (summary["gained"] - summary["lost"]) / summary["n"]
    assert summary["ci_a"] == wilson_interval(5, 8) and summary["ci_b"] == wilson_interval(3, 8)
    assert summary["p_value"] == mcnemar_exact(3, 1) == 0.625  # 2 * (1 + 4) / 16
    same = paired_summary(a, a)
    assert same["gained"] == same["lost"] == 0 and same["p_value"] == 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: wilson_interval(1, 0), "n >= 1"),
        (lambda: wilson_interval(11, 10), r"in \[0, n\]"),
        (lambda: wilson_interval(-1, 10), r"in \[0, n\]"),
        (lambda: wilson_interval(1, 10, z=0.0), "z must be"),
        (lambda: mcnemar_exact(-1, 3), ">= 0"),
        (lambda: paired_summary([True], [True, False]), "one to one"),
        (lambda: paired_summary([], []), "at least one"),
    ],
)
def test_bad_counts_are_refused(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
