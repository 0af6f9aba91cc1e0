"""The hyperparameters: one frozen dataclass per algorithm, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gfo.config import FLOAT32_MAX, STDEV_RANGE
from gfo.errors import ConfigError

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
    and uses a population of at least 32 (the sphere before and after: docs/algorithms.md)."""

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
