"""`gfo bench --suite bbob`: gfo's algorithms and other libraries' on COCO's BBOB functions.

Every cell of the grid (optimizer x function x dimension x instance) is one run under COCO's
observer, which writes COCO's own `.info` and `.dat` files, with gfo's `cell.json` written last.
The package, one concern a module:

- `_grid`: the grid (`Grid`, `Cell`), its options and their checks, where the cells' data go.
- here: `plan`, the cells of a grid checked against those already on disk.
- `_cells`: running a cell under COCO's observer, and a whole grid resumably (`run_all`).
- `_summary`: results.csv, summary.md (targets reached, ERT per function group), the console table.
- `_ecdf`: cocopp's ECDF plots.
- `_command`: the `gfo bench --suite` command: its options checked, the grid run and reported.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

from gfo.coco._cells import algorithm_info, run_all, run_cell
from gfo.coco._command import bench_suite
from gfo.coco._ecdf import run_cocopp
from gfo.coco._grid import (
    CELL_FILE,
    DEFAULT_BUDGET,
    DEFAULT_DIMS,
    DEFAULT_FUNCTIONS,
    DEFAULT_INSTANCES,
    FINAL_TARGET,
    GROUPS,
    INSTALL_HINT,
    SUITES,
    TARGETS,
    Cell,
    Grid,
    algo_folder,
    parse_algos,
    parse_ints,
)
from gfo.coco._summary import (
    COLUMNS,
    Pooled,
    SuiteResult,
    collect,
    pool,
    print_result,
    report,
    summary_markdown,
    write_results_csv,
)
from gfo.errors import GfoError

__all__ = [
    "CELL_FILE",
    "COLUMNS",
    "DEFAULT_BUDGET",
    "DEFAULT_DIMS",
    "DEFAULT_FUNCTIONS",
    "DEFAULT_INSTANCES",
    "FINAL_TARGET",
    "GROUPS",
    "INSTALL_HINT",
    "SUITES",
    "TARGETS",
    "Cell",
    "Grid",
    "Pooled",
    "SuiteResult",
    "algo_folder",
    "algorithm_info",
    "bench_suite",
    "check_installed",
    "collect",
    "parse_algos",
    "parse_ints",
    "plan",
    "pool",
    "print_result",
    "report",
    "run_all",
    "run_cell",
    "run_cocopp",
    "summary_markdown",
    "write_results_csv",
]


# `check_installed` and `plan` live here rather than in `_grid`: tests replace `gfo.coco.find_spec`
# to stand for a missing library, and `find_spec` is looked up where the function is defined.
def check_installed() -> None:
    """cocoex runs the functions, cocopp draws the ECDFs: both must be there before anything runs."""
    missing = [m for m in ("cocoex", "cocopp", "six") if find_spec(m) is None]
    if missing:
        raise GfoError(f"--suite bbob needs {', '.join(missing)} (COCO); {INSTALL_HINT}")


def plan(grid: Grid, out: Path, *, force: bool = False) -> list[Cell]:
    """Every cell, in the order they run (dimension, function, instance, algorithm), checked against
    cells already in `out`: one made with another budget or step size is refused unless `force`."""
    check_installed()
    cells = [
        Cell(algo, f, d, i, grid.evaluations(d), algo_folder(out, algo) / f"bbob_f{f:03d}_i{i:02d}_d{d:02d}")
        for d in grid.dims
        for f in grid.functions
        for i in grid.instances
        for algo in grid.algos
    ]
    if not force:
        for cell in cells:
            if not cell.record.exists():
                continue
            saved = json.loads(cell.record.read_text())
            if (saved["budget"], saved["sigma0"]) != (cell.budget, grid.sigma0):
                raise GfoError(
                    f"{cell.folder} holds a run with other settings (budget {saved['budget']}, sigma0 "
                    f"{saved['sigma0']}); rerun with the same --budget, use another --out, or --force"
                )
    return cells
