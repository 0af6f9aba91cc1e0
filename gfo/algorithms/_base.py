"""The ask/tell interface every algorithm implements, and the helpers the built-in adapters share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

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


def _stdev_init(config: Any, spec: SearchSpec) -> float:
    return float(config.stdev_init or spec.stdev)


def _stepsize_stats(stdev: torch.Tensor) -> dict[str, float]:
    s = stdev.detach().double().reshape(-1)
    # fsum: exact, so the logged mean does not depend on how many threads torch reduces with (a
    # resumed run in another process must log the same bits).
    mean = math.fsum(s.tolist()) / max(len(s), 1)
    return {"stepsize_mean": mean, "stepsize_min": float(s.min()), "stepsize_max": float(s.max())}
