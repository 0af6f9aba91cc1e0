"""The BBOB grid: which optimizers on which (function, dimension, instance), its cells and folders."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from gfo import peers
from gfo.errors import ConfigError, GfoError
from gfo.registry import ALGORITHMS, PROBLEMS, unknown_name

SUITES = ("bbob",)
INSTALL_HINT = "pip install 'gfo[bbob]'"
#: COCO's 51 targets of f - f_opt, five per decade from 1e2 to 1e-8 (those its observer logs),
#: computed as COCO does, 10^(i/5): 10 ** (2 - k/5) differs in the last bit and misses its rows.
TARGETS = tuple(10 ** (i / 5) for i in range(10, -41, -1))
FINAL_TARGET = 1e-8
#: COCO's five groups of the 24 BBOB functions.
GROUPS = {
    "separable f1-5": range(1, 6),
    "moderate f6-9": range(6, 10),
    "ill-conditioned f10-14": range(10, 15),
    "multimodal f15-19": range(15, 20),
    "weakly structured f20-24": range(20, 25),
    "all f1-24": range(1, 25),
}
CELL_FILE = "cell.json"
#: What a grid defaults to: every function at 2, 5 and 10 dimensions, 3 instances, 100 x D
#: evaluations: seconds of CPU for a gfo algorithm (docs/benchmarking.md, the default grid).
DEFAULT_FUNCTIONS = "1-24"
DEFAULT_DIMS = "2,5,10"
DEFAULT_INSTANCES = "1-3"
DEFAULT_BUDGET = 100.0


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """`"1-5"`, `"2,5,10,20"`, `"1-3,7"` -> sorted distinct integers (one-line error otherwise)."""
    values: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            a, b = (int(low), int(high)) if dash else (int(part), int(part))
        except ValueError:
            raise ConfigError(
                f"{option} takes integers, lists and ranges like 1-5 or 2,5,10; got {text!r}"
            ) from None
        if a > b:
            raise ConfigError(f"{option} range {part!r} is empty; write it low-high, e.g. {b}-{a}")
        values.update(range(a, b + 1))
    if not values:
        raise ConfigError(f"{option} is empty; give e.g. {option} 1-5")
    return tuple(sorted(values))


def parse_algos(text: str) -> tuple[str, ...]:
    """gfo's algorithms, `pycma` and `ng:NAME`, each checked (unknown name, missing library)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--algos is empty; give e.g. --algos sep-cmaes,cmaes,pycma,ng:CMA")
    known = ALGORITHMS.names()
    for name in names:
        if peers.is_peer(name):
            peers.check(name)
        elif name not in known:
            choices = [*known, peers.PYCMA, peers.PYCMA_DIAGONAL, "ng:NAME"]
            raise GfoError(unknown_name("algorithm", name, choices) + " in --algos")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--algos lists {', '.join(duplicates)} twice; give each once")
    return tuple(names)


@dataclass(frozen=True)
class Grid:
    """What `gfo bench --suite bbob` runs: every algorithm on every (function, dim, instance)."""

    algos: tuple[str, ...]
    functions: tuple[int, ...]
    dims: tuple[int, ...]
    instances: tuple[int, ...]
    budget: float  # evaluations per dimension (COCO's convention)
    sigma0: float = 2.0  # COCO's usual initial step size for the [-5, 5]^D region of interest

    def __post_init__(self) -> None:
        dimensions = PROBLEMS.get("bbob").DIMENSIONS
        bad = [f for f in self.functions if not 1 <= f <= 24]
        if bad:
            raise ConfigError(
                f"--functions must be BBOB ids 1 to 24; got {bad[0]}, use e.g. --functions 1-24"
            )
        bad = [d for d in self.dims if d not in dimensions]
        if bad:
            raise ConfigError(
                f"--dims must be bbob dimensions ({', '.join(map(str, dimensions))}); got {bad[0]}"
            )
        if any(i < 1 for i in self.instances):
            raise ConfigError(
                f"--instances must be >= 1; got {min(self.instances)}, use e.g. --instances 1-5"
            )
        if not (math.isfinite(self.budget) and self.budget * min(self.dims) >= 1):
            raise ConfigError(
                f"--budget is evaluations per dimension and must give >= 1 evaluation; got {self.budget}, "
                "use e.g. --budget 1e4"
            )

    def evaluations(self, dim: int) -> int:
        return math.ceil(self.budget * dim)


@dataclass(frozen=True)
class Cell:
    """One run of the grid and its folder `OUT/coco/<algo>/<problem id>/`."""

    algo: str
    function: int
    dim: int
    instance: int
    budget: int  # evaluations
    folder: Path

    @property
    def seed(self) -> int:
        return self.instance

    @property
    def record(self) -> Path:
        return self.folder / CELL_FILE


def algo_folder(out: Path, algo: str) -> Path:
    """Where COCO's data of one optimizer go (`ng:CMA` -> `ng-CMA`); cocopp reads it whole."""
    return out / "coco" / algo.replace(":", "-")
