"""Every search algorithm comes from EvoTorch; this module turns them into ask/tell.

EvoTorch's class algorithms own their loop (`step()` samples, calls `problem.evaluate`, updates).
gfo's loop must own evaluation (batching across a population, workers, checkpoints), so the adapter
splits each `step()` at the evaluation: `ask` runs the sampling half and `tell` the update half,
calling the very same EvoTorch code (distribution sampling and natural-gradient updates for the
Gaussian family; the public CMA-ES update methods for `cmaes` / `sep-cmaes`). Nothing here is a
re-implementation of an update rule.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from gfo.errors import ConfigError
from gfo.problem import Sense


@dataclass(frozen=True)
class SearchSpec:
    """What an algorithm needs to know about a problem to start searching."""

    sense: Sense
    solution_length: int
    center: torch.Tensor
    stdev: float
    popsize: int | None = None  # the problem's suggestion (`Problem.default_popsize`)


def default_popsize(n: int, *, even: bool = False, minimum: int = 4) -> int:
    """4 + floor(3 ln n) (Hansen's CMA-ES default), optionally rounded up to even."""
    p = max(minimum, 4 + int(3 * math.log(max(n, 1))))
    return p + (p % 2) if even else p


class Algorithm:
    """Ask/tell interface. Subclasses declare a frozen `Config` dataclass of hyperparameters."""

    Config: ClassVar[type]
    summary: ClassVar[str] = ""
    #: Config keys whose effect lives in `state_dict()`: a resume loads that state, which would
    #: silently override a changed value, so it refuses the change. Every other key takes effect
    #: from the resumed generation on, and the run records where it changed.
    state_settings: ClassVar[tuple[str, ...]] = ("stdev_init",)

    def __init__(self, config: Any, spec: SearchSpec, seed: int) -> None:
        self.config = config
        self.spec = spec
        self.seed = seed

    @property
    def popsize(self) -> int:
        raise NotImplementedError

    def _popsize(self, fallback: int | None, *, even: bool = False) -> int | None:
        """`algo.popsize`, else the problem's suggestion (rounded up to even if needed), else `fallback`."""
        if self.config.popsize:
            return int(self.config.popsize)
        if self.spec.popsize:
            return self.spec.popsize + (self.spec.popsize % 2 if even else 0)
        return fallback

    def ask(self) -> torch.Tensor:
        """A (popsize, solution_length) tensor of candidates to evaluate."""
        raise NotImplementedError

    def tell(self, population: torch.Tensor, fitness: torch.Tensor) -> dict[str, float]:
        """Update from the fitness (problem's sense, all finite) of the last `ask`; return step-size stats."""
        raise NotImplementedError

    def center(self) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything that determines future `ask`s: tensors and plain values only."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- hyperparameters


def _positive(owner: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ConfigError(f"algo.{name} must be > 0 for {owner}; got {value}")


def _check_popsize(owner: str, popsize: int | None, *, even: bool) -> None:
    if popsize is None:
        return
    if popsize < 2:
        raise ConfigError(f"algo.popsize must be >= 2 for {owner}; got {popsize}, use e.g. 16")
    if even and popsize % 2:
        raise ConfigError(
            f"algo.popsize must be even for antithetic sampling in {owner}; got {popsize}, use {popsize + 1}"
        )


@dataclass(frozen=True)
class ESConfig:
    """OpenAI-style ES (Salimans et al. 2017): fixed sigma, Adam, centred ranks, antithetic pairs."""

    popsize: int | None = field(default=None, metadata={"help": "even; default max(16, 4 + 3 ln n)"})
    stdev_init: float | None = field(
        default=None,
        metadata={"help": "fixed sigma; default: problem's spread / 40 (sigma bounds the precision)"},
    )
    center_learning_rate: float | None = field(
        default=None, metadata={"help": "Adam step size; default: problem's spread / 40"}
    )

    def __post_init__(self) -> None:
        _check_popsize("es", self.popsize, even=True)
        _positive("es", stdev_init=self.stdev_init, center_learning_rate=self.center_learning_rate)


@dataclass(frozen=True)
class PGPEConfig:
    """PGPE (Sehnke et al. 2010) with the ClipUp optimizer (Toklu et al. 2020), symmetric sampling."""

    popsize: int | None = field(default=None, metadata={"help": "even; default max(32, 4 + 3 ln n)"})
    stdev_init: float | None = field(
        default=None, metadata={"help": "initial sigma; default: problem's spread"}
    )
    center_learning_rate: float | None = field(
        default=None, metadata={"help": "ClipUp step size; default: max_speed / 2"}
    )
    max_speed: float | None = field(
        default=None, metadata={"help": "ClipUp speed limit (norm of a step); default: stdev_init / 10"}
    )
    momentum: float = field(default=0.9, metadata={"help": "ClipUp momentum"})
    stdev_learning_rate: float = field(default=0.2, metadata={"help": "sigma learning rate"})
    stdev_max_change: float = field(default=0.2, metadata={"help": "max relative sigma change per step"})

    def __post_init__(self) -> None:
        _check_popsize("pgpe", self.popsize, even=True)
        _positive(
            "pgpe",
            stdev_init=self.stdev_init,
            center_learning_rate=self.center_learning_rate,
            max_speed=self.max_speed,
            stdev_learning_rate=self.stdev_learning_rate,
            stdev_max_change=self.stdev_max_change,
        )
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"algo.momentum must be in [0, 1); got {self.momentum}, use 0.9")


@dataclass(frozen=True)
class NESConfig:
    """Natural evolution strategies (Wierstra et al. 2014); learning rates default to the paper's."""

    popsize: int | None = field(default=None, metadata={"help": "default 4 + 3 ln n"})
    stdev_init: float | None = field(
        default=None, metadata={"help": "initial sigma; default: problem's spread"}
    )
    center_learning_rate: float = field(
        default=1.0, metadata={"help": "multiplier of the paper's rate (1.0)"}
    )
    stdev_learning_rate: float = field(default=1.0, metadata={"help": "multiplier of the paper's sigma rate"})

    def __post_init__(self) -> None:
        _check_popsize("nes", self.popsize, even=False)
        _positive(
            "nes",
            stdev_init=self.stdev_init,
            center_learning_rate=self.center_learning_rate,
            stdev_learning_rate=self.stdev_learning_rate,
        )


@dataclass(frozen=True)
class XNESConfig(NESConfig):
    """xNES (Glasmachers et al. 2010). The paper's sigma rate is slow in 20+ dimensions; gfo doubles it
    and uses a population of at least 32 (20-d sphere: ~12000x in 300 generations instead of ~100x)."""

    popsize: int | None = field(default=None, metadata={"help": "default max(32, 4 + 3 ln n)"})
    stdev_learning_rate: float = field(default=2.0, metadata={"help": "multiplier of the paper's sigma rate"})


@dataclass(frozen=True)
class CEMConfig:
    """Cross-entropy method (Rubinstein 1999): refit a diagonal Gaussian to the elite."""

    popsize: int | None = field(default=None, metadata={"help": "default max(32, 4 + 3 ln n)"})
    stdev_init: float | None = field(
        default=None, metadata={"help": "initial sigma; default: problem's spread"}
    )
    parenthood_ratio: float = field(default=0.25, metadata={"help": "elite fraction"})
    stdev_max_change: float | None = field(
        default=0.1, metadata={"help": "max relative sigma change per step (stops premature collapse)"}
    )

    def __post_init__(self) -> None:
        _check_popsize("cem", self.popsize, even=False)
        _positive("cem", stdev_init=self.stdev_init, stdev_max_change=self.stdev_max_change)
        if not 0 < self.parenthood_ratio < 1:
            raise ConfigError(
                f"algo.parenthood_ratio must be in (0, 1); got {self.parenthood_ratio}, use 0.25"
            )
        if self.popsize is not None and int(self.popsize * self.parenthood_ratio) < 2:
            # one elite gives a zero (then NaN) spread: the search stops for good
            raise ConfigError(
                f"algo.popsize x algo.parenthood_ratio must leave >= 2 elites for cem; got {self.popsize} x "
                f"{self.parenthood_ratio}, use popsize >= {math.ceil(2 / self.parenthood_ratio)}"
            )


@dataclass(frozen=True)
class CMAESConfig:
    """CMA-ES (Hansen 2016, "The CMA Evolution Strategy: A Tutorial"); defaults from the tutorial."""

    popsize: int | None = field(default=None, metadata={"help": "default 4 + 3 ln n"})
    stdev_init: float | None = field(
        default=None, metadata={"help": "initial sigma; default: problem's spread"}
    )
    active: bool = field(default=True, metadata={"help": "active CMA (negative weights)"})
    c_sigma_ratio: float = field(default=1.0, metadata={"help": "multiplier of the step-size learning rate"})
    c_mu_ratio: float = field(default=1.0, metadata={"help": "multiplier of the rank-mu learning rate"})

    def __post_init__(self) -> None:
        _check_popsize("cmaes", self.popsize, even=False)
        _positive(
            "cmaes", stdev_init=self.stdev_init, c_sigma_ratio=self.c_sigma_ratio, c_mu_ratio=self.c_mu_ratio
        )


# ---------------------------------------------------------------- EvoTorch adapter


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


class _EvoTorch(Algorithm):
    def __init__(self, config: Any, spec: SearchSpec, seed: int) -> None:
        super().__init__(config, spec, seed)
        self._problem = _shell_problem(spec, seed)
        self._algo = self._build(self._problem, config.stdev_init or spec.stdev)

    def _build(self, problem: Any, stdev: float) -> Any:
        """The EvoTorch algorithm; `stdev` is `stdev_init` or else the problem's spread."""
        raise NotImplementedError

    def _rng_state(self) -> torch.Tensor:
        return self._problem.generator.get_state()

    def _set_rng_state(self, state: torch.Tensor) -> None:
        self._problem.generator.set_state(state)


class _Gaussian(_EvoTorch):
    """PGPE, SNES, XNES, CEM: EvoTorch's `GaussianSearchAlgorithm._step_non_distributed`, split in two."""

    @property
    def popsize(self) -> int:
        return int(self._algo._popsize)

    def ask(self) -> torch.Tensor:
        out = torch.empty(self.popsize, self.spec.solution_length)
        self._algo._distribution.sample(out=out, generator=self._problem)
        return out

    def tell(self, population: torch.Tensor, fitness: torch.Tensor) -> dict[str, float]:
        algo = self._algo
        gradients = algo._distribution.compute_gradients(
            population,
            fitness.to(population.dtype),
            objective_sense=self.spec.sense,
            ranking_method=algo._ranking_method,
        )
        algo._update_distribution(gradients)
        sigma = algo._distribution.parameters["sigma"]
        # xNES keeps a full factor A (covariance A A^T): per-coordinate stdev is a row norm.
        return _stepsize_stats(sigma.norm(dim=1) if sigma.ndim == 2 else sigma)

    def center(self) -> torch.Tensor:
        return self._algo._distribution.parameters["mu"].clone()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "distribution": {k: _clone(v) for k, v in self._algo._distribution.parameters.items()},
            "rng": self._rng_state(),
        }
        opt = self._algo._optimizer
        if opt is not None and hasattr(opt, "_optim"):
            # deepcopy: torch's state_dict() and load_state_dict() share tensors with the live optimizer
            state["optimizer"] = copy.deepcopy(opt._optim.state_dict())
        elif opt is not None:
            state["velocity"] = opt._velocity.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._algo._distribution = self._algo._distribution.modified_copy(**state["distribution"])
        self._set_rng_state(state["rng"])
        opt = self._algo._optimizer
        if "optimizer" in state:
            opt._optim.load_state_dict(copy.deepcopy(state["optimizer"]))
        elif "velocity" in state:
            opt._velocity = state["velocity"].clone()


class ES(_Gaussian):
    Config = ESConfig
    summary = "OpenAI ES: fixed sigma, Adam, centred ranks, antithetic pairs"
    # Adam keeps its step size in the optimizer state (torch's param_groups), which a resume loads.
    state_settings = ("stdev_init", "center_learning_rate")

    def _build(self, problem: Any, stdev: float) -> Any:
        from evotorch.algorithms import PGPE as _PGPE

        c = self.config
        spread = self.spec.stdev
        return _PGPE(
            problem,
            popsize=self._popsize(default_popsize(problem.solution_length, even=True, minimum=16), even=True),
            center_learning_rate=c.center_learning_rate or spread / 40,
            stdev_learning_rate=0.0,
            stdev_init=c.stdev_init or spread / 40,
            center_init=self.spec.center,
            optimizer="adam",
            ranking_method="centered",
            symmetric=True,
            stdev_max_change=None,
        )


class PGPE(_Gaussian):
    Config = PGPEConfig
    summary = "PGPE with ClipUp, adaptive sigma, symmetric sampling"

    def _build(self, problem: Any, stdev: float) -> Any:
        from evotorch.algorithms import PGPE as _PGPE

        c = self.config
        max_speed = c.max_speed or (2 * c.center_learning_rate if c.center_learning_rate else stdev / 10)
        return _PGPE(
            problem,
            popsize=self._popsize(default_popsize(problem.solution_length, even=True, minimum=32), even=True),
            center_learning_rate=c.center_learning_rate or max_speed / 2,
            stdev_learning_rate=c.stdev_learning_rate,
            stdev_init=stdev,
            center_init=self.spec.center,
            optimizer="clipup",
            optimizer_config={"max_speed": max_speed, "momentum": c.momentum},
            ranking_method="centered",
            symmetric=True,
            stdev_max_change=c.stdev_max_change,
        )


class SNES(_Gaussian):
    Config = NESConfig
    summary = "separable natural ES: diagonal Gaussian, natural gradient"

    def _build(self, problem: Any, stdev: float) -> Any:
        from evotorch.algorithms import SNES as _SNES

        c = self.config
        return _SNES(
            problem,
            popsize=self._popsize(None),
            stdev_init=stdev,
            center_init=self.spec.center,
            center_learning_rate=c.center_learning_rate,
            stdev_learning_rate=c.stdev_learning_rate,
        )


class XNES(_Gaussian):
    Config = XNESConfig
    summary = "exponential natural ES: full covariance, natural gradient"

    def _build(self, problem: Any, stdev: float) -> Any:
        from evotorch.algorithms import XNES as _XNES

        c = self.config
        return _XNES(
            problem,
            popsize=self._popsize(default_popsize(problem.solution_length, minimum=32)),
            stdev_init=stdev,
            center_init=self.spec.center,
            center_learning_rate=c.center_learning_rate,
            stdev_learning_rate=c.stdev_learning_rate,
        )


class CEM(_Gaussian):
    Config = CEMConfig
    summary = "cross-entropy method: refit a diagonal Gaussian to the elite"

    def _build(self, problem: Any, stdev: float) -> Any:
        from evotorch.algorithms import CEM as _CEM

        c = self.config
        popsize = self._popsize(default_popsize(problem.solution_length, minimum=32))
        assert popsize is not None
        if not c.popsize:  # a problem's suggestion still leaves >= 2 elites (one gives a NaN spread)
            popsize = max(popsize, math.ceil(2 / c.parenthood_ratio))
        return _CEM(
            problem,
            popsize=popsize,
            parenthood_ratio=c.parenthood_ratio,
            stdev_init=stdev,
            center_init=self.spec.center,
            stdev_max_change=c.stdev_max_change,
        )


class CMAES(_EvoTorch):
    """EvoTorch's `CMAES._step`, split at `get_population_weights` (which would evaluate)."""

    Config = CMAESConfig
    summary = "CMA-ES, full covariance (d^2 memory)"
    separable: ClassVar[bool] = False

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
        from evotorch.algorithms.cmaes import _h_sig, _limit_stdev

        a = self._algo
        zs, ys = self._zs, self._ys
        a._population.set_values(population)
        a._population.set_evals(fitness.to(population.dtype))
        indices = a._population.argsort(obj_index=a.obj_index)  # best first, in the problem's sense
        ranks = torch.empty_like(indices)
        ranks[indices] = torch.arange(a.popsize, dtype=indices.dtype)
        weights = a.weights[ranks]
        local_m, shaped_m = a.update_m(zs, ys, weights)
        a.update_p_sigma(local_m)
        a.update_sigma()
        h_sig = _h_sig(a.p_sigma, a.c_sigma, a._steps_count)
        a.update_p_c(shaped_m, h_sig)
        a.update_C(zs, ys, weights, h_sig)
        if a.stdev_min is not None or a.stdev_max is not None:
            a.C = _limit_stdev(a.sigma, a.C, a.stdev_min, a.stdev_max)
        if (a._steps_count + 1) % a.decompose_C_freq == 0:
            a.decompose_C()
        a._steps_count += 1
        diag = a.C if self.separable else torch.diagonal(a.C)
        return _stepsize_stats(a.sigma * diag.clamp_min(0).sqrt())

    def center(self) -> torch.Tensor:
        return self._algo.m.clone()

    _STATE = ("m", "sigma", "C", "A", "p_sigma", "p_c")

    def state_dict(self) -> dict[str, Any]:
        state = {k: _clone(getattr(self._algo, k)) for k in self._STATE}
        state["steps"] = self._algo._steps_count
        state["rng"] = self._rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self._STATE:
            setattr(self._algo, k, _clone(state[k]))
        self._algo._steps_count = int(state["steps"])
        self._set_rng_state(state["rng"])


class SepCMAES(CMAES):
    summary = "diagonal (separable) CMA-ES: linear memory, for thousands of dimensions"
    separable = True


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _stepsize_stats(stdev: torch.Tensor) -> dict[str, float]:
    s = stdev.detach().double().reshape(-1)
    # fsum: exact, so the logged mean does not depend on how many threads torch reduces with (a
    # resumed run in another process must log the same bits).
    mean = math.fsum(s.tolist()) / max(len(s), 1)
    return {"stepsize_mean": mean, "stepsize_min": float(s.min()), "stepsize_max": float(s.max())}
