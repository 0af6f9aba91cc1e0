"""Every search algorithm comes from EvoTorch; this module turns them into ask/tell.

gfo's loop owns evaluation (batching a population, workers, checkpoints), so each algorithm is an
`ask` (sample) and a `tell` (update) that run EvoTorch's own code. Nothing here re-implements an
update rule, and `tests/test_algorithms.py` checks every built-in against EvoTorch's class `step()`
for the same seed.

- `pgpe`, `cem`, `es`: EvoTorch's public functional ask/tell (`evotorch.algorithms.functional`:
  `pgpe`/`pgpe_tell`, `cem`/`cem_tell`, NamedTuple states). Two departures keep them on the class
  algorithms' trajectory. Sampling: `pgpe_ask` / `cem_ask` draw from torch's global generator (they
  take none) and, when symmetric, fill the noise as one block where the class fills every other row,
  so they give other numbers for the same seed; `ask` samples instead the public distribution object
  the class algorithm samples from (`evotorch.distributions`), from gfo's own generator: the same
  bits as class `PGPE` / `CEM`. Adam (`es`): the functional `adam` rounds differently from the
  `torch.optim.Adam` that class `PGPE(optimizer="adam")` runs, and a few ulps become a different
  ranking within 50-250 generations, so `es` hands `pgpe` a custom optimizer (its documented
  `(init, ask, tell)` form) over `evotorch.optimizers.Adam`, the optimizer class PGPE uses.
  Result: `cem` and `es` reproduce the class trajectory bit for bit; `pgpe` (functional ClipUp,
  which clips as `max_speed * (v / |v|)` where the class computes `v * (max_speed / |v|)`) to within
  1.3e-6 of the centre over 300 generations (12 measured runs). The class ClipUp would be exact, but
  its velocity, which a checkpoint must hold, is reachable only as the private `_velocity`.
- `snes`, `xnes`, `cmaes`, `sep-cmaes`: EvoTorch has them only as classes that own their loop, so
  the adapter splits `step()` at the evaluation and calls the same EvoTorch code for each half: the
  public CMA-ES update methods for `cmaes` / `sep-cmaes`; for `snes` / `xnes`, distribution sampling
  and the natural-gradient update, which EvoTorch keeps private. Every private access lives in
  `gfo._evotorch_private`, whose docstring names the public API each one stands in for.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch

from gfo._evotorch_private import cmaes_h_sig, nes_parameters, nes_sample, nes_update, set_nes_parameters
from gfo.config import FLOAT32_MAX, STDEV_RANGE
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


#: A larger population is a typo (the memory is popsize x dimension floats), not a search.
MAX_POPSIZE = 1_000_000
#: A full covariance (cmaes, xnes) beyond this dimension needs gigabytes per matrix and minutes per
#: decomposition (or matrix exponential).
MAX_FULL_COVARIANCE_DIM = 10_000


def _positive(owner: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is None:
            continue
        if not value > 0:
            raise ConfigError(f"algo.{name} must be > 0 for {owner}; got {value}")
        low, high = STDEV_RANGE if name == "stdev_init" else (0.0, FLOAT32_MAX)
        if not low <= value <= high:
            raise ConfigError(
                f"algo.{name} must be in [{low:g}, {high:.3g}] for {owner} (the search runs in float32); "
                f"got {value}"
            )


def _check_popsize(owner: str, popsize: int | None, *, even: bool) -> None:
    if popsize is None:
        return
    if popsize < 2:
        raise ConfigError(f"algo.popsize must be >= 2 for {owner}; got {popsize}, use e.g. 16")
    if popsize > MAX_POPSIZE:
        raise ConfigError(f"algo.popsize must be <= {MAX_POPSIZE} for {owner}; got {popsize}, use e.g. 16")
    if even and popsize % 2:
        raise ConfigError(
            f"algo.popsize must be even for antithetic sampling in {owner}; got {popsize}, use {popsize + 1}"
        )


def _check_full_covariance(owner: str, n: int) -> None:
    if n > MAX_FULL_COVARIANCE_DIM:
        raise ConfigError(
            f"{owner} holds n x n matrices, {4 * n * n / 1e9:.3g} GB each at dimension {n}, and factors one "
            f"in O(n^3) every few generations; above dimension {MAX_FULL_COVARIANCE_DIM} use sep-cmaes, "
            "snes or pgpe"
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

    def check_dimension(self, n: int) -> None:
        _check_full_covariance("xnes", n)


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
        if self.parenthood_ratio < 2 / MAX_POPSIZE:  # the default popsize leaves 2 elites
            raise ConfigError(
                f"algo.parenthood_ratio must be >= {2 / MAX_POPSIZE:g} for cem (2 elites of at most "
                f"{MAX_POPSIZE} candidates); got {self.parenthood_ratio}, use 0.25"
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

    def check_dimension(self, n: int, owner: str) -> None:
        """EvoTorch's CMA-ES squeezes a centre of length 1 to a scalar and refuses it; the full one
        holds n x n float32 matrices and decomposes one in O(n^3)."""
        if n < 2:
            raise ConfigError(f"{owner} needs a dimension >= 2; this problem has 1, use snes or xnes for it")
        if owner == "cmaes":
            _check_full_covariance(owner, n)

    def check_rates(self, algo: Any, owner: str) -> None:
        """The learning rates the ratios give EvoTorch's `CMAES` `algo` in its dimension and population
        keep the update defined: c_sigma < 2, else sqrt(c_sigma (2 - c_sigma) mu_eff) of the step-size
        path is NaN; c_1 + c_mu <= 1 (Hansen 2016, sec. 3.4), else C loses positive definiteness and
        its factorization fails. A ratio is refused only where it, not the default rate, breaks them
        (EvoTorch's separable default exceeds c_1 + c_mu = 1 for large populations in few dimensions)."""
        c_sigma, c_1, c_mu = float(algo.c_sigma), float(algo.c_1), float(algo.c_mu)
        where = f"for dimension {algo.problem.solution_length} and popsize {int(algo.popsize)}"
        base_sigma, base_mu = c_sigma / self.c_sigma_ratio, c_mu / self.c_mu_ratio
        if not c_sigma < 2:
            raise ConfigError(
                f"algo.c_sigma_ratio={self.c_sigma_ratio:g} gives {owner} a step-size rate c_sigma = "
                f"{c_sigma:.3g} {where}, which must be < 2; use c_sigma_ratio < {2 / base_sigma:.3g}"
            )
        limit = max(1.0, c_1 + base_mu) * (1 + 1e-6)  # float32 rates: 1 - c_1 + c_1 can exceed 1
        if not c_1 + c_mu <= limit:
            raise ConfigError(
                f"algo.c_mu_ratio={self.c_mu_ratio:g} gives {owner} a rank-mu rate c_mu = {c_mu:.3g} "
                f"{where}, and c_1 + c_mu = {c_1 + c_mu:.3g} must be <= {limit:.3g}; "
                f"use c_mu_ratio <= {(limit - c_1) / base_mu:.3g}"
            )


# ---------------------------------------------------------------- EvoTorch adapter


def _stdev_init(config: Any, spec: SearchSpec) -> float:
    return float(config.stdev_init or spec.stdev)


class _Functional(Algorithm):
    """ES, PGPE, CEM: EvoTorch's functional update; sampling as the class algorithm samples.

    `ask` fills `(popsize, n)` from the public distribution class the EvoTorch class algorithm uses,
    with a `torch.Generator` seeded as `evotorch.Problem(seed=...)` seeds its own: same numbers."""

    symmetric: ClassVar[bool] = True

    def __init__(self, config: Any, spec: SearchSpec, seed: int) -> None:
        super().__init__(config, spec, seed)
        self._generator = torch.Generator().manual_seed(seed)
        # float32, as EvoTorch's class algorithms hold the centre of a float32 problem
        self._state: Any = self._init(spec.center.detach().to(torch.float32).clone())

    def _init(self, center: torch.Tensor) -> Any:
        """The functional state (`PGPEState` or `CEMState`) for the configured hyperparameters."""
        raise NotImplementedError

    def _tell(self, state: Any, population: torch.Tensor, fitness: torch.Tensor) -> Any:
        raise NotImplementedError

    def _mu(self) -> torch.Tensor:
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        """The optimizer's part of `state_dict()`."""
        return {}

    def _loaded(self, mu: torch.Tensor, sigma: torch.Tensor, state: dict[str, Any]) -> Any:
        """The functional state with the checkpoint's centre, sigma and optimizer state."""
        raise NotImplementedError

    def ask(self) -> torch.Tensor:
        from evotorch.distributions import SeparableGaussian, SymmetricSeparableGaussian

        distribution = SymmetricSeparableGaussian if self.symmetric else SeparableGaussian
        out = torch.empty(self.popsize, self.spec.solution_length)
        distribution({"mu": self._mu(), "sigma": self._state.stdev}).sample(
            out=out, generator=self._generator
        )
        return out

    def tell(self, population: torch.Tensor, fitness: torch.Tensor) -> dict[str, float]:
        self._state = self._tell(self._state, population, fitness.to(population.dtype))
        return _stepsize_stats(self._state.stdev)

    def center(self) -> torch.Tensor:
        return self._mu().clone()

    def state_dict(self) -> dict[str, Any]:
        # The layout of the class-based adapter before it (a "distribution" of mu and sigma), so
        # checkpoints written by either resume under the other.
        return {
            "distribution": {"mu": self._mu().clone(), "sigma": self._state.stdev.clone()},
            "rng": self._generator.get_state(),
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        distribution = state["distribution"]
        self._state = self._loaded(distribution["mu"].clone(), distribution["sigma"].clone(), state)
        self._generator.set_state(state["rng"])


class _AdamState(NamedTuple):
    """What `pgpe` carries as ES's optimizer state: the centre, and EvoTorch's Adam (whose
    `torch.optim.Adam` moments `state_dict()` saves). The Adam object is updated in place."""

    center: torch.Tensor
    adam: Any


def _evotorch_adam(stepsize: float) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """`pgpe`'s custom optimizer `(init, ask, tell)` over `evotorch.optimizers.Adam`: the update
    class `PGPE(optimizer="adam")` applies, `mu + adam.ascent(grad)`."""
    from evotorch.optimizers import Adam

    def init(*, center_init: torch.Tensor, center_learning_rate: torch.Tensor) -> _AdamState:
        # `stepsize`, not `center_learning_rate`: pgpe hands that on rounded to a float32 tensor,
        # where class PGPE gives torch's Adam the Python float.
        adam = Adam(solution_length=center_init.shape[-1], dtype=center_init.dtype, stepsize=stepsize)
        return _AdamState(center_init, adam)

    def ask(state: _AdamState) -> torch.Tensor:
        return state.center

    def tell(state: _AdamState, *, follow_grad: torch.Tensor) -> _AdamState:
        return _AdamState(state.center + state.adam.ascent(follow_grad), state.adam)

    return init, ask, tell


class _PGPEFamily(_Functional):
    """ES and PGPE: `evotorch.algorithms.functional.pgpe`, centred ranks, symmetric sampling."""

    #: the smallest default population (antithetic pairs need an even one)
    min_default_popsize: ClassVar[int]

    @property
    def popsize(self) -> int:
        n = self.spec.solution_length
        popsize = self._popsize(default_popsize(n, even=True, minimum=self.min_default_popsize), even=True)
        assert popsize is not None
        return popsize

    def _pgpe(self, center: torch.Tensor, **hyperparameters: Any) -> Any:
        from evotorch.algorithms.functional import pgpe

        return pgpe(
            center_init=center,
            objective_sense=self.spec.sense,
            ranking_method="centered",
            symmetric=True,
            **hyperparameters,
        )

    def _tell(self, state: Any, population: torch.Tensor, fitness: torch.Tensor) -> Any:
        from evotorch.algorithms.functional import pgpe_tell

        return pgpe_tell(state, population, fitness)

    def _mu(self) -> torch.Tensor:
        center: torch.Tensor = self._state.optimizer_state.center
        return center


class ES(_PGPEFamily):
    Config = ESConfig
    summary = "OpenAI ES: fixed sigma, Adam, centred ranks, antithetic pairs"
    # Adam keeps its step size in the optimizer state (torch's param_groups), which a resume loads.
    state_settings = ("stdev_init", "center_learning_rate")

    min_default_popsize = 16

    def _init(self, center: torch.Tensor) -> Any:
        c, spread = self.config, self.spec.stdev
        step = float(c.center_learning_rate or spread / 40)
        return self._pgpe(
            center,
            center_learning_rate=step,
            stdev_learning_rate=0.0,
            stdev_init=float(c.stdev_init or spread / 40),
            optimizer=_evotorch_adam(step),
            stdev_max_change=None,
        )

    def _extra_state(self) -> dict[str, Any]:
        # deepcopy: torch's state_dict() and load_state_dict() share tensors with the live optimizer
        return {"optimizer": copy.deepcopy(self._state.optimizer_state.adam.contained_optimizer.state_dict())}

    def _loaded(self, mu: torch.Tensor, sigma: torch.Tensor, state: dict[str, Any]) -> Any:
        optimizer = self._state.optimizer_state
        optimizer.adam.contained_optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        return self._state._replace(optimizer_state=optimizer._replace(center=mu), stdev=sigma)


class PGPE(_PGPEFamily):
    Config = PGPEConfig
    summary = "PGPE with ClipUp, adaptive sigma, symmetric sampling"

    min_default_popsize = 32

    def _init(self, center: torch.Tensor) -> Any:
        c = self.config
        stdev = _stdev_init(c, self.spec)
        max_speed = c.max_speed or (2 * c.center_learning_rate if c.center_learning_rate else stdev / 10)
        return self._pgpe(
            center,
            center_learning_rate=c.center_learning_rate or max_speed / 2,
            stdev_learning_rate=c.stdev_learning_rate,
            stdev_init=stdev,
            optimizer="clipup",
            optimizer_config={"max_speed": max_speed, "momentum": c.momentum},
            stdev_max_change=c.stdev_max_change,
        )

    def _extra_state(self) -> dict[str, Any]:
        return {"velocity": self._state.optimizer_state.velocity.clone()}

    def _loaded(self, mu: torch.Tensor, sigma: torch.Tensor, state: dict[str, Any]) -> Any:
        # ClipUp's step size, speed limit and momentum stay the config's: a resume may change them
        optimizer = self._state.optimizer_state._replace(center=mu, velocity=state["velocity"].clone())
        return self._state._replace(optimizer_state=optimizer, stdev=sigma)


class CEM(_Functional):
    Config = CEMConfig
    summary = "cross-entropy method: refit a diagonal Gaussian to the elite"
    symmetric = False

    @property
    def popsize(self) -> int:
        c = self.config
        popsize = self._popsize(default_popsize(self.spec.solution_length, minimum=32))
        assert popsize is not None
        if not c.popsize:  # a problem's suggestion still leaves >= 2 elites (one gives a NaN spread)
            popsize = max(popsize, math.ceil(2 / c.parenthood_ratio))
        return popsize

    def _init(self, center: torch.Tensor) -> Any:
        from evotorch.algorithms.functional import cem

        c = self.config
        return cem(
            center_init=center,
            parenthood_ratio=c.parenthood_ratio,
            objective_sense=self.spec.sense,
            stdev_init=_stdev_init(c, self.spec),
            stdev_max_change=c.stdev_max_change,
        )

    def _tell(self, state: Any, population: torch.Tensor, fitness: torch.Tensor) -> Any:
        from evotorch.algorithms.functional import cem_tell

        return cem_tell(state, population, fitness)

    def _mu(self) -> torch.Tensor:
        center: torch.Tensor = self._state.center
        return center

    def _loaded(self, mu: torch.Tensor, sigma: torch.Tensor, state: dict[str, Any]) -> Any:
        return self._state._replace(center=mu, stdev=sigma)


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

    @property
    def popsize(self) -> int:
        popsize = self._popsize(default_popsize(self.spec.solution_length))  # = EvoTorch's default
        assert popsize is not None
        return popsize

    def _build(self, problem: Any, stdev: float) -> Any:
        from evotorch.algorithms import SNES as _SNES

        c = self.config
        return _SNES(
            problem,
            popsize=self.popsize,
            stdev_init=stdev,
            center_init=self.spec.center,
            center_learning_rate=c.center_learning_rate,
            stdev_learning_rate=c.stdev_learning_rate,
        )


class XNES(_NES):
    Config = XNESConfig
    summary = "exponential natural ES: full covariance, natural gradient"

    @property
    def popsize(self) -> int:
        popsize = self._popsize(default_popsize(self.spec.solution_length, minimum=32))
        assert popsize is not None
        return popsize

    def _build(self, problem: Any, stdev: float) -> Any:
        from evotorch.algorithms import XNES as _XNES

        c = self.config
        c.check_dimension(self.spec.solution_length)
        return _XNES(
            problem,
            popsize=self.popsize,
            stdev_init=stdev,
            center_init=self.spec.center,
            center_learning_rate=c.center_learning_rate,
            stdev_learning_rate=c.stdev_learning_rate,
        )


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


def _stepsize_stats(stdev: torch.Tensor) -> dict[str, float]:
    s = stdev.detach().double().reshape(-1)
    # fsum: exact, so the logged mean does not depend on how many threads torch reduces with (a
    # resumed run in another process must log the same bits).
    mean = math.fsum(s.tolist()) / max(len(s), 1)
    return {"stepsize_mean": mean, "stepsize_min": float(s.min()), "stepsize_max": float(s.max())}
