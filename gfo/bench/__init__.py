"""`gfo bench`: every algorithm x seed on one problem is a real run in `OUT/<algo>/seed-<k>/`.

- `_grid`: the grid, planned and checked before any run starts, and run resumably (`BenchRun`,
  `parse_algos`, `plan`, `run_all`, `budget_text`).
- `_summary`: what it reports, read back from the run folders, never from memory: `results.csv`,
  `summary.md`, `curves.png` (`gfo.plots.plot_curves`) and the printed table (`Row`, `AlgoStats`,
  `collect`, `stats`, `report`, `print_result`). Whatever additive counters the problem's
  evaluations carry get a column each, by their name.

`gfo.bench` re-exports their public names.
"""

from __future__ import annotations

from gfo.bench._grid import BenchRun, budget_text, parse_algos, plan, run_all
from gfo.bench._summary import (
    COLUMNS,
    COLUMNS_AFTER_COUNTERS,
    AlgoStats,
    BenchResult,
    Row,
    collect,
    counter_names,
    evals_to_target,
    print_result,
    ranking,
    report,
    stats,
    summary_markdown,
    write_results_csv,
)

__all__ = [
    "COLUMNS",
    "COLUMNS_AFTER_COUNTERS",
    "AlgoStats",
    "BenchResult",
    "BenchRun",
    "Row",
    "budget_text",
    "collect",
    "counter_names",
    "evals_to_target",
    "parse_algos",
    "plan",
    "print_result",
    "ranking",
    "report",
    "run_all",
    "stats",
    "summary_markdown",
    "write_results_csv",
]
