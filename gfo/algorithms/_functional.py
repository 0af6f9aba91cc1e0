"""`pgpe`, `cem`, `es`: EvoTorch's public functional ask/tell (`evotorch.algorithms.functional`:
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
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch

from gfo.algorithms._base import Algorithm, SearchSpec, _stdev_init, _stepsize_stats, default_popsize
from gfo.algorithms._configs import CEMConfig, ESConfig, PGPEConfig


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
