"""Other libraries' optimizers, driven like gfo's own in `gfo bench --suite bbob`.

`pycma` is Hansen's pycma (`cma.CMAEvolutionStrategy`), `pycma-diagonal` the same with
`CMA_diagonal=True` (sep-CMA-ES, Ros and Hansen 2008: the peer of gfo's `sep-cmaes`); `ng:NAME` is
Nevergrad's optimizer NAME (`ng:CMA`, `ng:DiagonalCMA`, `ng:NGOpt`, ...). Both libraries are
optional (`pip install 'gfo[bbob]'`) and imported only when named. Each is wrapped in the same
small ask/tell over numpy arrays, so the BBOB driver gives them exactly the budget, start point
and step size it gives gfo's algorithms.
"""

from __future__ import annotations

import difflib
from typing import Any, Protocol

import numpy as np

from gfo.errors import GfoError

INSTALL_HINT = "pip install 'gfo[bbob]'"
PYCMA = "pycma"
PYCMA_DIAGONAL = "pycma-diagonal"
NG_PREFIX = "ng:"


class Searcher(Protocol):
    """Ask/tell over numpy: what the BBOB driver needs of any optimizer."""

    def ask(self) -> np.ndarray:
        """A (k, dim) float64 array of candidates."""
        ...

    def tell(self, x: np.ndarray, f: np.ndarray) -> None: ...

    def stop(self) -> str | None:
        """The optimizer's own termination criterion that fired, if any (None: go on)."""
        ...


def is_peer(name: str) -> bool:
    return name in (PYCMA, PYCMA_DIAGONAL) or name.startswith(NG_PREFIX)


def _import(module: str, who: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise GfoError(f"{who} needs the {module} package; {INSTALL_HINT}") from None


def check(name: str) -> None:
    """Raise a one-line error if peer `name` is unknown or its library is not installed."""
    if name in (PYCMA, PYCMA_DIAGONAL):
        _import("cma", f"--algos {name}")
        return
    optimizer = name[len(NG_PREFIX) :]
    ng = _import("nevergrad", f"--algos {name}")
    known = sorted(ng.optimizers.registry)
    if optimizer not in known:
        close = difflib.get_close_matches(optimizer, known, n=1)
        hint = f"; did you mean 'ng:{close[0]}'?" if close else " (see nevergrad.optimizers.registry)"
        raise GfoError(f"unknown Nevergrad optimizer {optimizer!r} in --algos {name}{hint}")


def describe(name: str) -> str:
    """Library, version and optimizer, for COCO's `algorithm_info`."""
    if name in (PYCMA, PYCMA_DIAGONAL):
        diagonal = ", CMA_diagonal=True" if name == PYCMA_DIAGONAL else ""
        return f"pycma {_import('cma', name).__version__} CMAEvolutionStrategy, default options{diagonal}"
    return f"nevergrad {_import('nevergrad', name).__version__} {name[len(NG_PREFIX) :]}"


def make(name: str, x0: np.ndarray, sigma0: float, *, seed: int, budget: int) -> Searcher:
    """Peer `name` starting at `x0` with step size `sigma0`, seeded, told its evaluation budget."""
    if name in (PYCMA, PYCMA_DIAGONAL):
        return _PyCMA(x0, sigma0, seed, diagonal=name == PYCMA_DIAGONAL)
    return _Nevergrad(name[len(NG_PREFIX) :], x0, sigma0, seed, budget)


class _PyCMA:
    """pycma's CMA-ES with its default options and termination criteria (tolfun, tolx, stagnation,
    ...), as one would run it; only `maxiter` is lifted, since the budget is the driver's. pycma
    samples from numpy's global generator (its `seed` option seeds it), so a run is reproducible
    as long as nothing else draws from it between asks, which holds for the driver's one cell at a time."""

    def __init__(self, x0: np.ndarray, sigma0: float, seed: int, *, diagonal: bool = False) -> None:
        cma = _import("cma", PYCMA)
        options = {"seed": seed, "maxiter": float("inf"), "verbose": -9, "verb_log": 0, "verb_disp": 0}
        if diagonal:
            options["CMA_diagonal"] = True
        self._es = cma.CMAEvolutionStrategy(np.asarray(x0, dtype=float), sigma0, options)

    def ask(self) -> np.ndarray:
        return np.asarray(self._es.ask(), dtype=float)

    def tell(self, x: np.ndarray, f: np.ndarray) -> None:
        self._es.tell(list(x), f.tolist())

    def stop(self) -> str | None:
        fired = self._es.stop()
        return ", ".join(sorted(fired)) if fired else None


class _Nevergrad:
    """A Nevergrad optimizer over an unbounded vector (like gfo's), asked one candidate at a time
    (`num_workers=1`: its sequential form)."""

    def __init__(self, optimizer: str, x0: np.ndarray, sigma0: float, seed: int, budget: int) -> None:
        ng = _import("nevergrad", f"{NG_PREFIX}{optimizer}")
        param = ng.p.Array(init=np.asarray(x0, dtype=float)).set_mutation(sigma=sigma0)
        param.random_state.seed(seed)
        self._opt = ng.optimizers.registry[optimizer](parametrization=param, budget=budget, num_workers=1)
        self._asked: Any = None

    def ask(self) -> np.ndarray:
        self._asked = self._opt.ask()
        return np.asarray(self._asked.value, dtype=float)[None]

    def tell(self, x: np.ndarray, f: np.ndarray) -> None:
        self._opt.tell(self._asked, float(f[0]))

    def stop(self) -> str | None:
        return None
