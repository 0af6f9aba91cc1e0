"""Known values of the test functions and their config checks.

What every registered problem must do (sense, shapes, determinism, batch = split) is checked by
`gfo.testing.ProblemConformance` in tests/test_conformance.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from gfo.errors import ConfigError
from problems.functions import Ellipsoid, FunctionConfig, Rastrigin, Rosenbrock, Sphere


@pytest.mark.parametrize("cls", [Sphere, Rastrigin, Rosenbrock, Ellipsoid])
def test_dim_is_the_solution_length(cls: type) -> None:
    problem = cls(FunctionConfig(dim=6))
    assert problem.solution_length == 6 and problem.initial_center().shape == (6,)


def test_known_values() -> None:
    x0 = torch.zeros(1, 4, dtype=torch.float64)
    ones = torch.ones(1, 4, dtype=torch.float64)
    assert Sphere.f(x0).item() == 0.0
    assert Rastrigin.f(x0).item() == pytest.approx(0.0, abs=1e-12)
    assert Rastrigin.f(ones).item() == pytest.approx(4.0)  # 10n + sum(1 - 10 cos 2pi) = 40 + 4 - 40
    assert Rosenbrock.f(ones).item() == 0.0
    assert Rosenbrock.f(x0).item() == 3.0
    # ellipsoid: coefficients 10^(6 (i-1)/(n-1)) -> 1, 100, 1e4, 1e6 for n = 4
    assert Ellipsoid.f(ones).item() == pytest.approx(1 + 100 + 1e4 + 1e6)


def test_ellipsoid_matches_pycma() -> None:
    cma = pytest.importorskip("cma")
    x = torch.randn(3, 30, dtype=torch.float64)
    ours = Ellipsoid.f(x)
    theirs = [cma.ff.elli(row.numpy()) for row in x]
    assert ours.tolist() == pytest.approx(theirs, rel=1e-12)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"^problem\.dim must be >= 1; got 0$"):
        FunctionConfig(dim=0)
    for stdev in (-1.0, 0.0, math.nan):
        with pytest.raises(ConfigError, match=r"^problem\.stdev must be > 0; got "):
            FunctionConfig(stdev=stdev)
    for center in (math.inf, -math.inf, math.nan):
        with pytest.raises(ConfigError, match=rf"^problem\.center must be finite; got {center}$"):
            FunctionConfig(center=center)
    # what is accepted is used: the centre and spread the search starts from
    problem = Sphere(FunctionConfig(dim=3, center=-1.5, stdev=0.25))
    assert problem.initial_center().tolist() == [-1.5] * 3 and problem.initial_stdev == 0.25
