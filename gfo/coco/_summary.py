"""The results of a BBOB grid from its cells' `cell.json`: results.csv, summary.md, ECDFs, console table.

The summary pools, per function group, the (function, dimension, instance, target) trials over
COCO's 51 targets 10^2 ... 10^-8 of f - f_opt: "targets reached" is the fraction of trials whose
target was reached within the budget (the end point of COCO's ECDF), and the expected running time
(ERT, Hansen et al. 2009, "Real-parameter black-box optimization benchmarking: experimental setup")
is the evaluations spent over all of them (until the target, or the whole run for a miss), in units
of the dimension, divided by the number reached.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfo import peers, tables
from gfo.coco._ecdf import run_cocopp
from gfo.coco._grid import GROUPS, Cell, Grid

COLUMNS = (
    "algo",
    "function",
    "dim",
    "instance",
    "status",
    "evaluations",
    "budget",
    "best_delta",
    "solved",
    "evals_to_final",
    "targets_reached",
    "stop_reason",
    "wall_s",
    "cpu_s",
    "error",
    "folder",
)


@dataclass(frozen=True)
class Pooled:
    """Trials of one optimizer on a set of cells, pooled over COCO's 51 targets."""

    cells: int
    trials: int
    reached: int
    cost: float  # evaluations / dimension, summed over trials (to the target, or the whole run)
    solved: int  # cells that reached the final target 1e-8

    @property
    def fraction(self) -> float:
        return self.reached / self.trials if self.trials else math.nan

    @property
    def ert(self) -> float:
        """Expected running time in evaluations / dimension: all evaluations spent per target reached."""
        return self.cost / self.reached if self.reached else math.inf


def pool(records: Sequence[dict[str, Any]]) -> Pooled:
    trials = reached = solved = 0
    cost = 0.0
    for r in records:
        for hit in r["evals_to_targets"]:
            trials += 1
            reached += hit is not None
            cost += (r["evaluations"] if hit is None else hit) / r["dim"]
        solved += r["evals_to_targets"][-1] is not None
    return Pooled(len(records), trials, reached, cost, solved)


def collect(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """The records of the done cells (read from their `cell.json`, never from memory)."""
    return [json.loads(c.record.read_text()) for c in cells if c.record.exists()]


def write_results_csv(cells: Sequence[Cell], path: Path) -> None:
    tables.write_csv(path, COLUMNS, (_csv_row(cell) for cell in cells))


def _csv_row(cell: Cell) -> list[Any]:
    base = [cell.algo, cell.function, cell.dim, cell.instance]
    if not cell.record.exists():
        return [*base, "not run", "", cell.budget, *[""] * 8, str(cell.folder)]
    r = json.loads(cell.record.read_text())
    hits = r["evals_to_targets"]
    return [
        *base,
        "error" if r["error"] else "ok",
        r["evaluations"],
        r["budget"],
        repr(r["best_delta"]),
        hits[-1] is not None,
        hits[-1],
        sum(h is not None for h in hits),
        r["stop_reason"],
        r["wall_s"],
        r["cpu_s"],
        r["error"],
        str(cell.folder),
    ]


def _ert(value: float) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.3g}" if value < 1e5 else f"{value:.2e}"


def _ranges(values: Sequence[int]) -> str:
    """(1, 2, 3, 5) -> "1-3,5"."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def summary_markdown(
    grid: Grid, records: Sequence[dict[str, Any]], *, planned: int, wall_s: float, cpu_s: float
) -> str:
    """Targets reached and ERT per function group, over all dimensions and per dimension."""
    groups = {g: set(fs) & set(grid.functions) for g, fs in GROUPS.items()}
    groups = {g: fs for g, fs in groups.items() if fs}
    by_algo = {a: [r for r in records if r["algo"] == a] for a in grid.algos}

    def table(title: str, cell: Callable[[list[dict[str, Any]]], str], dims: Sequence[int]) -> list[str]:
        rows = []
        for algo, mine in by_algo.items():
            row = [algo]
            for fs in groups.values():
                chosen = [r for r in mine if r["function"] in fs and r["dim"] in dims]
                row.append(cell(chosen) if chosen else "-")
            rows.append(row)
        return [title, "", *tables.markdown(["algorithm", *groups], rows), ""]

    def reached(rs: list[dict[str, Any]]) -> str:
        p, errors = pool(rs), sum(bool(r["error"]) for r in rs)
        return f"{100 * p.fraction:.1f}% ({p.solved}/{p.cells})" + (f", {errors} errors" if errors else "")

    def ert(rs: list[dict[str, Any]]) -> str:
        return _ert(pool(rs).ert)

    dims_text = ",".join(map(str, grid.dims))
    lines = [
        "# BBOB benchmark",
        "",
        f"{len(grid.algos)} optimizers on BBOB functions {_ranges(grid.functions)}, dimensions {dims_text}, "
        f"instances {_ranges(grid.instances)}; budget {grid.budget:g} x D evaluations, start at the origin "
        f"with step size {grid.sigma0:g}. {len(records)} of {planned} cells done. "
        f"The runs took {wall_s:.0f} s ({cpu_s:.0f} s of CPU).",
        "",
        "Targets: COCO's 51 values of f - f_opt from 1e2 to 1e-8. *Targets reached*: the fraction of "
        "(function, dimension, instance, target) trials reached within the budget (the end of COCO's "
        "ECDF), with the runs that reached 1e-8 in brackets. *ERT*: evaluations spent over all trials "
        "(to the target, or the whole run when missed), divided by D and by the number of targets "
        "reached; lower is better, inf: none reached. A run that stops or fails early is charged what it "
        "evaluated (COCO's convention): read ERT with the targets reached and how the runs ended.",
        "",
    ]
    lines += table("## Targets reached, all dimensions", reached, grid.dims)
    lines += table("## ERT / D, all dimensions", ert, grid.dims)
    for reference in (peers.PYCMA, peers.PYCMA_DIAGONAL):
        if by_algo.get(reference):
            title = f"## ERT relative to {reference}, all dimensions (1.00: the same; lower: faster)"
            lines += table(title, _ratio_to(by_algo[reference]), grid.dims)
    for d in grid.dims:
        lines += table(
            f"## {d}-D: targets reached / ERT per D",
            lambda rs: f"{100 * pool(rs).fraction:.0f}% / {_ert(pool(rs).ert)}",
            [d],
        )
    stops: dict[str, dict[str, int]] = {}
    for r in records:
        key = "error: " + r["error"] if r["error"] else r["stop_reason"].split(":")[0]
        stops.setdefault(r["algo"], {}).setdefault(key, 0)
        stops[r["algo"]][key] += 1
    lines += ["## How the runs ended", ""]
    for algo, counts in stops.items():
        lines.append(f"- {algo}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines += ["", "Per-run numbers: results.csv. COCO data: coco/. ECDFs (cocopp): ecdf/ and cocopp/.", ""]
    return "\n".join(lines)


def _ratio_to(reference: Sequence[dict[str, Any]]) -> Callable[[list[dict[str, Any]]], str]:
    """ERT of some cells over the reference's ERT on the same (function, dimension, instance)."""
    by_key = {(r["function"], r["dim"], r["instance"]): r for r in reference}

    def ratio(rs: list[dict[str, Any]]) -> str:
        keys = [(r["function"], r["dim"], r["instance"]) for r in rs]
        ours, theirs = pool(rs).ert, pool([by_key[k] for k in keys if k in by_key]).ert
        return f"{ours / theirs:.2f}" if math.isfinite(ours) and math.isfinite(theirs) else "-"

    return ratio


@dataclass(frozen=True)
class SuiteResult:
    records: list[dict[str, Any]]
    results_csv: Path
    summary_md: Path
    ecdf: list[Path]


def report(grid: Grid, cells: Sequence[Cell], out: Path, *, plots: bool = True) -> SuiteResult:
    """results.csv, summary.md and (through cocopp) the ECDF plots, from the cell folders."""
    records = collect(cells)
    out.mkdir(parents=True, exist_ok=True)
    write_results_csv(cells, out / "results.csv")
    wall, cpu = sum(r["wall_s"] for r in records), sum(r["cpu_s"] for r in records)
    summary = summary_markdown(grid, records, planned=len(cells), wall_s=wall, cpu_s=cpu)
    (out / "summary.md").write_text(summary)
    ecdf: list[Path] = []
    if plots and records:
        try:
            ecdf = run_cocopp(grid, out)
        except Exception as exc:  # a plot must never cost the table
            warnings.warn(f"cocopp failed ({exc}); see {out / 'cocopp.log'}", stacklevel=2)
    return SuiteResult(records, out / "results.csv", out / "summary.md", ecdf)


def print_result(grid: Grid, result: SuiteResult, console: Any) -> None:
    """Targets reached and ERT / D per function group, all dimensions pooled."""
    groups = [g for g, fs in GROUPS.items() if set(fs) & set(grid.functions)]
    rows = []
    for algo in grid.algos:
        mine = [r for r in result.records if r["algo"] == algo]
        cells = []
        for g in groups:
            chosen = [r for r in mine if r["function"] in GROUPS[g]]
            p = pool(chosen)
            cells.append(f"{100 * p.fraction:.0f}% / {_ert(p.ert)}" if chosen else "-")
        rows.append([algo, *cells])
    title = "targets reached / ERT per D, all dimensions"
    table = tables.rich_table(["algorithm", *groups], rows, title=title, left=("algorithm",))
    console.print(table)
    for algo in grid.algos:
        failed = [r for r in result.records if r["algo"] == algo and r["error"]]
        if failed:
            first = failed[0]
            where = f"f{first['function']} {first['dim']}-D i{first['instance']}"
            line = f"{algo}: {len(failed)} cells ended with an error, the first ({where}): {first['error']}"
            console.print(f"[red]error[/] {line}", soft_wrap=True, highlight=False)
    files = [result.results_csv, result.summary_md, *([result.ecdf[0].parent] if result.ecdf else [])]
    console.print("wrote " + ", ".join(str(f) for f in files), soft_wrap=True)
