"""The checks every search algorithm passes, whoever wrote it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from gfo import checkpoint
from gfo.algorithms import Algorithm, SearchSpec
from gfo.problem import Sense
from gfo.testing._config import assert_config_conforms, subject


def sphere(x: torch.Tensor) -> torch.Tensor:
    """f(x) = sum x_i^2, in float64."""
    return (x.double() ** 2).sum(-1)


def spec(n: int, sense: Sense = "min", popsize: int | None = None) -> SearchSpec:
    """Start at (3, ..., 3) with spread 2: far enough from the sphere's optimum to have to travel."""
    return SearchSpec(sense, n, torch.full((n,), 3.0), 2.0, popsize)


class AlgorithmConformance:
    """Conformance suite for a `gfo.algorithms.Algorithm`: subclass it as `TestSomething` and set

    - `algorithm_cls`: the class, built as every algorithm is, `algorithm_cls(config, SearchSpec, seed)`;
    - `config`: its hyperparameters (default: `algorithm_cls.Config()`).

    Or override the fixture `algorithm_and_config`, returning `(algorithm_cls, config)`. Tests vary
    the config with `dataclasses.replace`, so it has to be a dataclass with a `popsize` field.
    """

    algorithm_cls: ClassVar[type[Algorithm]]
    config: ClassVar[Any] = None
    #: The bar of `test_reduces_the_sphere`: (first generation's mean) / (best found) on the 20-d
    #: sphere within `sphere_generations` generations of the default hyperparameters.
    sphere_reduction: ClassVar[float] = 1000.0
    sphere_generations: ClassVar[int] = 300

    @pytest.fixture
    def algorithm_and_config(self) -> tuple[type[Algorithm], Any]:
        """The class under test and its hyperparameters."""
        return subject(self, "algorithm_cls", "algorithm_and_config")

    @staticmethod
    def make(
        algorithm_and_config: tuple[type[Algorithm], Any], search: SearchSpec, seed: int = 0, **hp: Any
    ) -> Algorithm:
        cls, config = algorithm_and_config
        return cls(dataclasses.replace(config, **hp) if hp else config, search, seed)

    def sphere_run(
        self, algorithm_and_config: tuple[type[Algorithm], Any], generations: int, seed: int = 0
    ) -> tuple[float, float]:
        """(mean fitness of the first generation, best fitness seen) on the 20-d sphere."""
        algorithm = self.make(algorithm_and_config, spec(20), seed)
        first_mean, best = math.nan, math.inf
        for generation in range(generations):
            x = algorithm.ask()
            f = sphere(x)
            if generation == 0:
                first_mean = float(f.mean())
            best = min(best, float(f.min()))
            algorithm.tell(x, f)
        return first_mean, best

    # ------------------------------------------------------------------ declarations

    def test_declares_a_frozen_config_with_a_popsize(
        self, algorithm_and_config: tuple[type[Algorithm], Any]
    ) -> None:
        cls, config = algorithm_and_config
        assert issubclass(cls, Algorithm)
        assert_config_conforms(cls.Config, config, "algo")
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        assert "popsize" in fields, "the Config needs a `popsize` field (`--popsize` sets it)"
        assert set(cls.state_settings) <= fields, f"state_settings name no config field: {cls.state_settings}"

    # ------------------------------------------------------------------ ask and tell

    def test_ask_shape_and_center(self, algorithm_and_config: tuple[type[Algorithm], Any]) -> None:
        algorithm = self.make(algorithm_and_config, spec(7))
        x = algorithm.ask()
        assert x.shape == (algorithm.popsize, 7)
        assert torch.isfinite(x).all()
        assert torch.allclose(algorithm.center(), torch.full((7,), 3.0))
        stats = algorithm.tell(x, sphere(x))
        assert all(isinstance(k, str) and math.isfinite(v) for k, v in stats.items()), stats

    def test_reduces_the_sphere(self, algorithm_and_config: tuple[type[Algorithm], Any]) -> None:
        first_mean, best = self.sphere_run(algorithm_and_config, self.sphere_generations)
        assert first_mean / best >= self.sphere_reduction, (first_mean, best)

    def test_same_seed_same_numbers(self, algorithm_and_config: tuple[type[Algorithm], Any]) -> None:
        assert self.sphere_run(algorithm_and_config, 15, seed=3) == self.sphere_run(
            algorithm_and_config, 15, seed=3
        )
        assert self.sphere_run(algorithm_and_config, 15, seed=3) != self.sphere_run(
            algorithm_and_config, 15, seed=4
        )

    def test_state_round_trip_through_a_checkpoint_continues_identically(
        self, algorithm_and_config: tuple[type[Algorithm], Any], tmp_path: Path
    ) -> None:
        """A resume: the state is saved as a checkpoint is (loaded with weights_only) into another
        instance, built with another seed, which then asks exactly what the first one asks."""
        a = self.make(algorithm_and_config, spec(10), seed=1)
        for _ in range(5):
            x = a.ask()
            a.tell(x, sphere(x))
        checkpoint.save(tmp_path, {"algorithm": a.state_dict()})
        b = self.make(algorithm_and_config, spec(10), seed=99)
        b.load_state_dict(checkpoint.load(tmp_path)["algorithm"])
        for _ in range(5):
            xa, xb = a.ask(), b.ask()
            assert torch.equal(xa, xb)
            a.tell(xa, sphere(xa))
            b.tell(xb, sphere(xb))
        assert torch.equal(a.center(), b.center())

    def test_maximization_is_handled_by_the_declared_sense(
        self, algorithm_and_config: tuple[type[Algorithm], Any]
    ) -> None:
        """Maximizing -f follows the same path as minimizing f: the algorithm honours `SearchSpec.sense`."""
        lo = self.make(algorithm_and_config, spec(5), seed=2)
        hi = self.make(algorithm_and_config, spec(5, sense="max"), seed=2)
        for _ in range(10):
            x_lo, x_hi = lo.ask(), hi.ask()
            assert torch.allclose(x_lo, x_hi)
            lo.tell(x_lo, sphere(x_lo))
            hi.tell(x_hi, -sphere(x_hi))
        assert torch.allclose(lo.center(), hi.center(), atol=1e-5)

    def test_problem_suggested_popsize_is_used_unless_algo_popsize_is_set(
        self, algorithm_and_config: tuple[type[Algorithm], Any]
    ) -> None:
        """`Problem.default_popsize` arrives as `SearchSpec.popsize`; one that must be even rounds it up."""
        suggested = self.make(algorithm_and_config, spec(20, popsize=9), popsize=None)
        assert suggested.popsize in (9, 10), suggested.popsize
        assert suggested.ask().shape == (suggested.popsize, 20)
        assert self.make(algorithm_and_config, spec(20, popsize=9), popsize=12).popsize == 12
