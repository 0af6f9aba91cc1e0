"""`snes`, `xnes`, `cmaes`, `sep-cmaes`: EvoTorch has them only as classes that own their loop, so
the adapter splits `step()` at the evaluation and calls the same EvoTorch code for each half: the
public CMA-ES update methods for `cmaes` / `sep-cmaes`; for `snes` / `xnes`, distribution sampling
and the natural-gradient update, which EvoTorch keeps private. Every private access lives in
`gfo._evotorch_private`, whose docstring names the public API each one stands in for.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, ClassVar

import torch

from gfo._evotorch_private import cmaes_h_sig, nes_parameters, nes_sample, nes_update, set_nes_parameters
from gfo.algorithms._base import Algorithm, SearchSpec, _stdev_init, _stepsize_stats, default_popsize
from gfo.algorithms._configs import CMAESConfig, NESConfig, XNESConfig


def _shell_problem(spec: SearchSpec, seed: int) -> Any:
    """An EvoTorch problem that only carries sense, length and the RNG: gfo evaluates, not EvoTorch."""
    import evotorch

    logging.getLogger("evotorch").setLevel(logging.WARNING)  # it logs every Problem construction at INFO

    return evotorch.Problem(
        spec.sense,
        solution_length=spec.solution_length,
        initial_bounds=(-1.0, 1.0),
        dtype=torch.float32,
        seed=seed,
    )


class _EvoTorchClass(Algorithm):
    """SNES, XNES, CMA-ES: an EvoTorch class algorithm, its `step()` split at the evaluation."""

    def __init__(self, config: Any, spec: SearchSpec, seed: int) -> None:
        super().__init__(config, spec, seed)
        self._problem = _shell_problem(spec, seed)
        self._algo = self._build(self._problem, _stdev_init(config, spec))

    def _build(self, problem: Any, stdev: float) -> Any:
        """The EvoTorch algorithm; `stdev` is `stdev_init` or else the problem's spread."""
        raise NotImplementedError

    def _rng_state(self) -> torch.Tensor:
        return self._problem.generator.get_state()

    def _set_rng_state(self, state: torch.Tensor) -> None:
        self._problem.generator.set_state(state)


class _NES(_EvoTorchClass):
    """SNES, XNES: `GaussianSearchAlgorithm._step_non_distributed`, split in two (EvoTorch internals,
    through `gfo._evotorch_private`)."""

    evotorch_class: ClassVar[str]  # the class in evotorch.algorithms
    minimum_popsize: ClassVar[int] = 4  # EvoTorch's default is default_popsize(n) for SNES

    @property
    def popsize(self) -> int:
        popsize = self._popsize(default_popsize(self.spec.solution_length, minimum=self.minimum_popsize))
        assert popsize is not None
        return popsize

    def _build(self, problem: Any, stdev: float) -> Any:
        import evotorch.algorithms

        c = self.config
        return getattr(evotorch.algorithms, self.evotorch_class)(
            problem,
            popsize=self.popsize,
            stdev_init=stdev,
            center_init=self.spec.center,
            center_learning_rate=c.center_learning_rate,
            stdev_learning_rate=c.stdev_learning_rate,
        )

    def ask(self) -> torch.Tensor:
        return nes_sample(self._algo, self.popsize, self._problem)

    def tell(self, population: torch.Tensor, fitness: torch.Tensor) -> dict[str, float]:
        nes_update(self._algo, population, fitness.to(population.dtype), self.spec.sense)
        sigma = nes_parameters(self._algo)["sigma"]
        # xNES keeps a full factor A (covariance A A^T): per-coordinate stdev is a row norm.
        return _stepsize_stats(sigma.norm(dim=1) if sigma.ndim == 2 else sigma)

    def center(self) -> torch.Tensor:
        return nes_parameters(self._algo)["mu"].clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "distribution": {k: _clone(v) for k, v in nes_parameters(self._algo).items()},
            "rng": self._rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_nes_parameters(self._algo, {k: _clone(v) for k, v in state["distribution"].items()})
        self._set_rng_state(state["rng"])


class SNES(_NES):
    Config = NESConfig
    summary = "separable natural ES: diagonal Gaussian, natural gradient"
    evotorch_class = "SNES"


class XNES(_NES):
    Config = XNESConfig
    summary = "exponential natural ES: full covariance, natural gradient"
    evotorch_class = "XNES"
    minimum_popsize = 32

    def _build(self, problem: Any, stdev: float) -> Any:
        self.config.check_dimension(self.spec.solution_length)  # a full covariance: d^2 memory
        return super()._build(problem, stdev)


class CMAES(_EvoTorchClass):
    """EvoTorch's `CMAES._step`, split where `get_population_weights` would evaluate. Every step
    but h_sigma is a public `CMAES` method; gfo counts the generations `_step` would count."""

    Config = CMAESConfig
    summary = "CMA-ES, full covariance (d^2 memory)"
    separable: ClassVar[bool] = False

    def __init__(self, config: Any, spec: SearchSpec, seed: int) -> None:
        import evotorch

        owner = "sep-cmaes" if self.separable else "cmaes"
        config.check_dimension(spec.solution_length, owner)
        with warnings.catch_warnings():  # EvoTorch copies the centre with torch.tensor(tensor), which warns
            warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
            super().__init__(config, spec, seed)
        config.check_rates(self._algo, owner)
        # ranks the told fitness in the problem's sense, as `get_population_weights` does
        self._ranked = evotorch.SolutionBatch(self._problem, popsize=self.popsize, empty=True)
        self._generation = 0

    def _build(self, problem: Any, stdev: float) -> Any:
        from evotorch.algorithms import CMAES as _CMAES

        c = self.config
        return _CMAES(
            problem,
            stdev_init=stdev,
            popsize=self._popsize(None),
            center_init=self.spec.center,
            active=c.active,
            c_sigma_ratio=c.c_sigma_ratio,
            c_mu_ratio=c.c_mu_ratio,
            separable=self.separable,
        )

    @property
    def popsize(self) -> int:
        return int(self._algo.popsize)

    def ask(self) -> torch.Tensor:
        self._zs, self._ys, xs = self._algo.sample_distribution()
        return xs.clone()

    def tell(self, population: torch.Tensor, fitness: torch.Tensor) -> dict[str, float]:
        a = self._algo
        zs, ys = self._zs, self._ys
        self._ranked.set_values(population)
        self._ranked.set_evals(fitness.to(population.dtype))
        indices = self._ranked.argsort()  # best first, in the problem's sense
        ranks = torch.empty_like(indices)
        ranks[indices] = torch.arange(a.popsize, dtype=indices.dtype)
        weights = a.weights[ranks]
        local_m, shaped_m = a.update_m(zs, ys, weights)
        a.update_p_sigma(local_m)
        a.update_sigma()
        h_sig = cmaes_h_sig(a.p_sigma, a.c_sigma, self._generation)
        a.update_p_c(shaped_m, h_sig)
        a.update_C(zs, ys, weights, h_sig)
        # `_step` would now apply stdev_min / stdev_max, which gfo never sets
        if (self._generation + 1) % a.decompose_C_freq == 0:
            a.decompose_C()
        self._generation += 1
        diag = a.C if self.separable else torch.diagonal(a.C)
        return _stepsize_stats(a.sigma * diag.clamp_min(0).sqrt())

    def center(self) -> torch.Tensor:
        return self._algo.m.clone()

    _STATE = ("m", "sigma", "C", "A", "p_sigma", "p_c")

    def state_dict(self) -> dict[str, Any]:
        state = {k: _clone(getattr(self._algo, k)) for k in self._STATE}
        state["steps"] = self._generation
        state["rng"] = self._rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self._STATE:
            setattr(self._algo, k, _clone(state[k]))
        self._generation = int(state["steps"])
        self._set_rng_state(state["rng"])


class SepCMAES(CMAES):
    summary = "diagonal (separable) CMA-ES: linear memory, for thousands of dimensions"
    separable = True


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value
