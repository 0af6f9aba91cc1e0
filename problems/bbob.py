"""COCO's BBOB suite (Hansen et al. 2009, "Real-parameter black-box optimization benchmarking 2009:
noiseless functions definitions"): the 24 noiseless functions, evaluated by `cocoex` itself.

Nothing here re-implements a function: `evaluate` calls the `cocoex` problem, so the values are
COCO's to the last bit, and an attached COCO observer (`observe`) writes the `.info`/`.dat` files
that `cocopp` reads. `cocoex` is an optional dependency (`pip install 'gfo[bbob]'`), imported on
first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from gfo.config import check_spread
from gfo.errors import ConfigError, GfoError
from gfo.problem import Context, Evaluation, Problem, Sense

INSTALL_HINT = "pip install 'gfo[bbob]'"
#: The dimensions the bbob suite defines (COCO refuses others).
DIMENSIONS = (2, 3, 5, 10, 20, 40)
#: COCO's final target: a run has solved an instance when f - f_opt <= 1e-8.
FINAL_PRECISION = 1e-8


def import_cocoex() -> Any:
    """`cocoex`, or a one-line error saying how to install it."""
    try:
        import cocoex
    except ImportError:
        raise GfoError(f"the bbob problems need cocoex (COCO's experiment package); {INSTALL_HINT}") from None
    cocoex.log_level("warning")  # it prints an INFO line per observed problem
    return cocoex


@dataclass(frozen=True)
class BBOBConfig:
    function: int = field(default=1, metadata={"help": "BBOB function id, 1 to 24"})
    instance: int = field(default=1, metadata={"help": "instance (rotation, shift, f_opt), >= 1"})
    dim: int = field(default=10, metadata={"help": "dimension: 2, 3, 5, 10, 20 or 40"})
    stdev: float = field(
        default=2.0, metadata={"help": "initial spread; 2 is COCO's usual sigma0 for the [-5, 5] box"}
    )

    def __post_init__(self) -> None:
        if not 1 <= self.function <= 24:
            raise ConfigError(f"problem.function must be a BBOB function id 1 to 24; got {self.function}")
        if self.instance < 1:
            raise ConfigError(f"problem.instance must be >= 1; got {self.instance}")
        if self.instance >= 2**31:  # cocoex takes a C int (beyond, its suite segfaults)
            raise ConfigError(f"problem.instance must be < 2**31; got {self.instance}")
        if self.dim not in DIMENSIONS:
            raise ConfigError(
                f"problem.dim must be one of the bbob dimensions {', '.join(map(str, DIMENSIONS))}; "
                f"got {self.dim}"
            )
        check_spread("problem.stdev", self.stdev)


class BBOB(Problem):
    """One BBOB problem (function, instance, dimension), minimized; fitness is COCO's raw f(x)."""

    sense: ClassVar[Sense] = "min"
    Config: ClassVar[type] = BBOBConfig
    DIMENSIONS: ClassVar[tuple[int, ...]] = DIMENSIONS

    def __init__(self, config: BBOBConfig) -> None:
        super().__init__(config)
        self.solution_length = config.dim
        self.initial_stdev = config.stdev
        self._coco: Any = None  # the cocoex problem, made on first use (it cannot be pickled)
        self._suite: Any = None  # owns the C problem: it must outlive it (freeing it first segfaults)
        self._observer: Any = None
        self._fopt: float | None = None

    @property
    def id(self) -> str:
        """COCO's name of the problem, e.g. `bbob_f003_i02_d05`."""
        c = self.config
        return f"bbob_f{c.function:03d}_i{c.instance:02d}_d{c.dim:02d}"

    def _problem(self) -> Any:
        if self._coco is None:
            cocoex = import_cocoex()
            c = self.config
            # A suite of this one problem: building the full suite costs thousands of times more.
            options = f"function_indices: {c.function} dimensions: {c.dim}"
            self._suite = cocoex.Suite("bbob", f"instances: {c.instance}", options)
            self._coco = self._suite.get_problem_by_function_dimension_instance(c.function, c.dim, c.instance)
        return self._coco

    def prepare(self) -> None:
        self._problem()

    def initial_center(self) -> torch.Tensor:
        # The domain middle (the origin), COCO's `initial_solution` for every bbob problem.
        return torch.as_tensor(self._problem().initial_solution, dtype=torch.float32)

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        problem = self._problem()
        rows = population.detach().to(torch.float64).cpu().numpy()
        return Evaluation(fitness=torch.tensor([problem(x) for x in rows], dtype=torch.float64))

    @property
    def fopt(self) -> float:
        """f at the optimum, from `cocoex.BareProblem` (the observed problem does not expose it)."""
        if self._fopt is None:
            c = self.config
            bare = import_cocoex().BareProblem("bbob", c.function, c.dim, c.instance)
            self._fopt = float(bare.best_value())
        return self._fopt

    @property
    def coco_version(self) -> str:
        return str(import_cocoex().__version__)

    @property
    def evaluations(self) -> int:
        """Evaluations as COCO counts them (what its observer logs)."""
        return int(self._problem().evaluations)

    def observe(self, folder: Path, *, algorithm: str, info: str = "") -> Path:
        """Log every later evaluation with COCO's bbob observer into `folder` (which must not exist:
        COCO would write to `folder-0001` instead). Call before the first evaluation."""
        if self._coco is not None and self._coco.evaluations:
            raise GfoError(f"{self.id}: observe() must come before the first evaluation")
        if folder.exists():
            raise GfoError(f"{folder} exists; COCO would write beside it, remove it first")
        folder.parent.mkdir(parents=True, exist_ok=True)
        values = {
            "outer_folder": str(folder.parent.resolve()),
            "result_folder": folder.name,
            "algorithm_name": algorithm,
            "algorithm_info": info or algorithm,
        }
        if any('"' in v for v in values.values()):
            raise GfoError(f"COCO's observer options cannot hold a double quote; got {values}")
        # Quoted, or COCO's option parser cuts a value at its first space (and reads "ng:" as a key).
        options = " ".join(f'{key}: "{value}"' for key, value in values.items())
        self._observer = import_cocoex().Observer("bbob", options)
        self._problem().observe_with(self._observer)
        return Path(self._observer.result_folder)

    def close(self) -> None:
        """Free the cocoex problem: the observer writes its last lines (the run's final evaluation)."""
        if self._coco is not None:
            self._coco.free()
        self._coco = self._suite = self._observer = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "coco_id": self.id}

    def fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {**super().fingerprint(), "function": c.function, "instance": c.instance}
