"""Statistics for comparing two models scored on the same items: Wilson intervals and exact McNemar;
and pass@k of sampled answers.

Pure functions of counts (standard library only), shared by `gfo eval --compare`, `gfo eval
--samples` and the learning harness. Items are paired: both models answer the same items, so the
test looks only at the items where they disagree (McNemar 1947), which is far more sensitive than
comparing two intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: The 0.975 quantile of the standard normal: a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; Agresti & Coull 1998, eq. 2).

    Centre (p + z²/2n) / (1 + z²/n), half-width z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²), with
    p = successes / n. Unlike p ± z sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at
    0/n or n/n, where it reaches exactly 0 or 1.
    """
    if n < 1:
        raise ValueError(f"wilson_interval needs n >= 1 trials; got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n]; got {successes} of {n}")
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a finite number > 0; got {z}, e.g. 1.96 for 95%")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs against 1/2.

    With b = gained and c = lost, p = min(1, 2 * sum_{i <= min(b, c)} C(b + c, i) / 2^(b + c)),
    and p = 1 when there is no discordant pair. Integer sums, so it is exact for any count.
    """
    if gained < 0 or lost < 0:
        raise ValueError(f"gained and lost must be counts >= 0; got {gained} and {lost}")
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(gained, lost) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_summary(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """Accuracy of A and B on the same items, their Wilson 95% intervals and the exact McNemar test.

    `correct_a[i]` and `correct_b[i]` say whether each model got item i right. Returns `n`,
    `acc_a`, `acc_b`, `ci_a`, `ci_b` (low, high), `gained` (items B got wrong and A right),
    `lost` (A wrong, B right) and `p_value`; acc_a - acc_b == (gained - lost) / n.
    """
    a, b = [bool(x) for x in correct_a], [bool(x) for x in correct_b]
    if len(a) != len(b):
        raise ValueError(f"paired items must match one to one; got {len(a)} for A and {len(b)} for B")
    n = len(a)
    if n == 0:
        raise ValueError("paired_summary needs at least one item")
    right_a, right_b = sum(a), sum(b)
    gained = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    lost = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return {
        "n": n,
        "acc_a": right_a / n,
        "acc_b": right_b / n,
        "ci_a": wilson_interval(right_a, n),
        "ci_b": wilson_interval(right_b, n),
        "gained": gained,
        "lost": lost,
        "p_value": mcnemar_exact(gained, lost),
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of an item, c of them correct (Chen et al.
    2021, arXiv 2107.03374, eq. 1): 1 - C(n - c, k) / C(n, k), the chance that k of the n drawn
    without replacement hold a correct one. With n = k it is 1 if any sample is correct, else 0.
    Exact in integers (`math.comb`), so large n loses no precision."""
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n]; got c={c} of n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n]; got k={k} with n={n} samples, draw at least k samples")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
