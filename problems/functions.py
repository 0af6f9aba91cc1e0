"""Classic test functions: unshifted, minimized, any dimension, comparable with pycma and the literature.

Formulas follow the COCO/BBOB and pycma (`cma.ff`) definitions without shifts or rotations, so a
result here can be checked against published runs of the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from gfo.config import STDEV_RANGE, check_spread
from gfo.errors import ConfigError
from gfo.problem import Context, Evaluation, Problem, Sense

#: A population is popsize x dim float32 values: a billion coordinates is a typo, not a test function.
MAX_DIM = 10_000_000


@dataclass(frozen=True)
class FunctionConfig:
    dim: int = field(default=20, metadata={"help": "number of variables"})
    center: float = field(default=3.0, metadata={"help": "every coordinate of the initial centre"})
    stdev: float = field(default=2.0, metadata={"help": "initial spread of the search distribution"})

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ConfigError(f"problem.dim must be >= 1; got {self.dim}")
        if self.dim > MAX_DIM:
            raise ConfigError(f"problem.dim must be <= {MAX_DIM}; got {self.dim}")
        check_spread("problem.stdev", self.stdev)
        if not math.isfinite(self.center):
            raise ConfigError(f"problem.center must be finite; got {self.center}")
        if not abs(self.center) <= STDEV_RANGE[1]:
            raise ConfigError(
                f"problem.center must be in [-{STDEV_RANGE[1]:g}, {STDEV_RANGE[1]:g}] (the search runs in "
                f"float32); got {self.center}"
            )


class TestFunction(Problem):
    sense: ClassVar[Sense] = "min"
    Config: ClassVar[type] = FunctionConfig
    state_settings: ClassVar[tuple[str, ...]] = ("center", "stdev")

    def __init__(self, config: FunctionConfig) -> None:
        super().__init__(config)
        self.solution_length = config.dim
        self.initial_stdev = config.stdev

    def initial_center(self) -> torch.Tensor:
        return torch.full((self.solution_length,), self.config.center)

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        # float64 so that 1e-8 targets on the ellipsoid are not lost to rounding
        return Evaluation(fitness=self.f(population.double()))

    @staticmethod
    def f(x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Sphere(TestFunction):
    """f(x) = sum x_i^2."""

    @staticmethod
    def f(x: torch.Tensor) -> torch.Tensor:
        return (x**2).sum(-1)


class Rastrigin(TestFunction):
    """f(x) = 10 n + sum (x_i^2 - 10 cos(2 pi x_i)); many local minima on the integer lattice."""

    @staticmethod
    def f(x: torch.Tensor) -> torch.Tensor:
        return 10 * x.shape[-1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(-1)


class Rosenbrock(TestFunction):
    """f(x) = sum 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2; minimum 0 at x = 1."""

    @staticmethod
    def f(x: torch.Tensor) -> torch.Tensor:
        return (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(-1)


class Ellipsoid(TestFunction):
    """Separable ellipsoid, condition 1e6: f(x) = sum 10^(6 (i-1)/(n-1)) x_i^2 (pycma's `cma.ff.elli`)."""

    @staticmethod
    def f(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        exponents = 6 * torch.arange(n, dtype=x.dtype) / max(n - 1, 1)
        return (10**exponents * x**2).sum(-1)
