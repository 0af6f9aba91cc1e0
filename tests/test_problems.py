"""Conformance suite for every registered problem, and known values of the test functions."""

from __future__ import annotations

import math

import pytest
import torch

from gfo.errors import ConfigError
from gfo.problem import Context, Problem
from gfo.registry import PROBLEMS
from problems.benchmarks import Ellipsoid, FunctionConfig, Rastrigin, Rosenbrock, Sphere

BENCHMARKS = ["sphere", "rastrigin", "rosenbrock", "ellipsoid"]


@pytest.mark.parametrize("name", PROBLEMS.names())
def test_registered_problem_has_uniform_shape(name: str) -> None:
    cls = PROBLEMS.get(name)
    assert issubclass(cls, Problem)
    assert cls.sense in ("min", "max")
    assert hasattr(cls.Config, "__dataclass_fields__")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_conformance(name: str) -> None:
    cls = PROBLEMS.get(name)
    problem = cls(cls.Config(dim=6))
    problem.prepare()
    assert problem.solution_length == 6
    center = problem.initial_center()
    assert center.shape == (6,)
    pop = torch.randn(5, 6)
    result = problem.evaluate(pop, Context(generation=0, seed=0))
    assert result.fitness.shape == (5,)
    assert torch.isfinite(result.fitness).all()
    # batched evaluation equals one-at-a-time evaluation
    singles = torch.cat([problem.evaluate(pop[i : i + 1], Context(0, 0)).fitness for i in range(5)])
    assert torch.equal(result.fitness, singles)


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
