"""What a benchmark reports, read back from the run folders (`summary.json`, `metrics.jsonl`), never
from memory, so it says exactly what the run folders say: `results.csv` (one row per run),
`summary.md` (median and IQR per algorithm), `curves.png` (drawn by `gfo.plots.plot_curves`) and
the table printed at the end. Whatever additive counters the problem's evaluations carry get a
column each, by their name.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gfo import tables
from gfo.bench._grid import BenchRun
from gfo.plots import plot_curves
from gfo.problem import Sense, better
from gfo.registry import PROBLEMS
from gfo.strictjson import read_jsonl

#: The columns of results.csv; the problem's counters (`Row.counters`) go between the two parts.
COLUMNS = (
    "algo",
    "seed",
    "status",
    "best",
    "heldout_best",
    "evaluations",
    "generations",
    "evals_to_target",
    "wall_s",
)
COLUMNS_AFTER_COUNTERS = ("stop_reason", "run_dir", "error")


@dataclass(frozen=True)
class Row:
    """One line of results.csv (numbers from the run's own files)."""

    algo: str
    seed: int
    status: str  # ok | failed
    best: float | None = None
    heldout_best: float | None = None
    evaluations: int | None = None
    generations: int | None = None
    evals_to_target: int | None = None
    wall_s: float | None = None
    counters: dict[str, float] = field(default_factory=dict)  # the run's totals (summary.json)
    stop_reason: str = ""
    run_dir: str = ""
    error: str = ""

    @property
    def score(self) -> float | None:
        """What ranks runs: the held-out best when the problem has one, else the final best."""
        return self.heldout_best if self.heldout_best is not None else self.best


@dataclass(frozen=True)
class AlgoStats:
    algo: str
    runs: int
    ok: int
    median: float
    q1: float
    q3: float
    median_evaluations: float
    median_wall_s: float
    hits: int
    median_evals_to_target: float
    median_counters: dict[str, float] = field(default_factory=dict)
    metric: str = field(default="best")


def collect(runs: Sequence[BenchRun], target: float | None = None) -> list[Row]:
    """One row per planned run, read from its folder."""
    rows = []
    for r in runs:
        summary_file = r.run_dir / "summary.json"
        if not summary_file.exists():
            error_file = r.run_dir / "error.txt"
            error = error_file.read_text().strip().splitlines()[-1] if error_file.exists() else "not run"
            rows.append(Row(r.algo, r.seed, "failed", run_dir=str(r.run_dir), error=error))
            continue
        s = json.loads(summary_file.read_text())
        hit = evals_to_target(r.run_dir / "metrics.jsonl", target, s["sense"]) if target is not None else None
        rows.append(
            Row(
                algo=r.algo,
                seed=r.seed,
                status="ok",
                best=s["best"],
                heldout_best=s.get("heldout_best"),
                evaluations=s["evaluations"],
                generations=s["generations"],
                evals_to_target=hit,
                wall_s=s["wall_s"],
                counters=dict(s.get("counters") or {}),
                stop_reason=s.get("stop_reason", ""),
                run_dir=str(r.run_dir),
            )
        )
    return rows


def evals_to_target(metrics: Path, target: float, sense: Sense) -> int | None:
    """Evaluations at the first generation whose best-so-far reaches `target` (None: never)."""
    for record in read_jsonl(metrics):
        so_far = record["best_so_far"]  # null while every value so far was non-finite
        if so_far is not None and not math.isnan(so_far) and not better(target, so_far, sense):
            return int(record["evaluations"])
    return None


def _quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    import numpy as np

    q1, med, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(med), float(q1), float(q3)


def stats(rows: Sequence[Row], sense: Sense) -> list[AlgoStats]:
    """Median and inter-quartile range per algorithm, best first in the problem's sense."""
    out = []
    for algo in dict.fromkeys(r.algo for r in rows):
        mine = [r for r in rows if r.algo == algo]
        ok = [r for r in mine if r.status == "ok" and r.score is not None]
        metric = "heldout_best" if ok and all(r.heldout_best is not None for r in ok) else "best"
        scores = [float(r.heldout_best if metric == "heldout_best" else r.best) for r in ok]  # type: ignore[arg-type]
        med, q1, q3 = _quantiles(scores) if scores else (math.nan,) * 3
        hits = [r.evals_to_target for r in ok if r.evals_to_target is not None]
        # A counter is an additive total: a run that never reported one counted 0 of it.
        counters = {k: _quantiles([r.counters.get(k, 0.0) for r in ok])[0] for k in counter_names(ok)}
        out.append(
            AlgoStats(
                algo=algo,
                runs=len(mine),
                ok=len(ok),
                median=med,
                q1=q1,
                q3=q3,
                median_evaluations=_quantiles([r.evaluations or 0 for r in ok])[0] if ok else math.nan,
                median_wall_s=_quantiles([r.wall_s or 0.0 for r in ok])[0] if ok else math.nan,
                hits=len(hits),
                median_evals_to_target=_quantiles(hits)[0] if hits else math.nan,
                median_counters=counters,
                metric=metric,
            )
        )

    def key(s: AlgoStats) -> tuple[int, float]:
        if math.isnan(s.median):
            return (1, 0.0)
        return (0, s.median if sense == "min" else -s.median)

    return sorted(out, key=key)


def counter_names(rows: Sequence[Row]) -> list[str]:
    """The counters any of `rows` carries, in the order they first appear."""
    return list(dict.fromkeys(k for r in rows for k in r.counters))


def write_results_csv(rows: Sequence[Row], path: Path) -> None:
    names = counter_names(rows)
    tables.write_csv(
        path,
        [*COLUMNS, *names, *COLUMNS_AFTER_COUNTERS],
        (
            [
                *(getattr(r, c) for c in COLUMNS),
                *(r.counters.get(k) for k in names),
                *(getattr(r, c) for c in COLUMNS_AFTER_COUNTERS),
            ]
            for r in rows
        ),
    )


def _metric(table: Sequence[AlgoStats]) -> str:
    return "held-out best" if table and table[0].metric == "heldout_best" else "final best"


def ranking(table: Sequence[AlgoStats], target: float | None) -> tuple[list[str], list[list[str]]]:
    """The per-algorithm table, best first: header and cells (summary.md and the printed table)."""
    metric = _metric(table)
    header = [
        "rank",
        "algorithm",
        "runs ok",
        f"median {metric}",
        "IQR",
        "median evaluations",
        "median wall s",
    ]
    if target is not None:
        header += [f"reached {target:g}", "median evals to target"]
    counters = list(dict.fromkeys(k for s in table for k in s.median_counters))
    header += [f"median {k.replace('_', ' ')}" for k in counters]
    fmt = tables.fmt
    rows = []
    for i, s in enumerate(table, 1):
        cells = [
            str(i),
            s.algo,
            f"{s.ok}/{s.runs}",
            fmt(s.median),
            f"{fmt(s.q1)} - {fmt(s.q3)}",
            fmt(s.median_evaluations, 6),
            fmt(s.median_wall_s, 3),
        ]
        if target is not None:
            cells += [f"{s.hits}/{s.ok}", fmt(s.median_evals_to_target, 6)]
        cells += [fmt(s.median_counters.get(k), 6) for k in counters]
        rows.append(cells)
    return header, rows


def summary_markdown(
    table: Sequence[AlgoStats], *, problem: str, sense: Sense, seeds: int, budget: str, target: float | None
) -> str:
    direction = "lower" if sense == "min" else "higher"
    lines = [
        f"# Benchmark: {problem}",
        "",
        f"{len(table)} algorithms x {seeds} seeds, budget {budget}. Ranked by the median {_metric(table)} "
        f"over seeds ({direction} is better); IQR is the 25th to 75th percentile.",
        "",
        *tables.markdown(*ranking(table, target)),
        "",
        "Per-run numbers: results.csv. Curves: curves.png.",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class BenchResult:
    rows: list[Row]
    table: list[AlgoStats]
    results_csv: Path
    summary_md: Path
    curves_png: Path | None
    target: float | None = None


def report(
    runs: Sequence[BenchRun], out: Path, *, target: float | None = None, budget: str = ""
) -> BenchResult:
    """results.csv, summary.md and curves.png from the run folders."""
    problem = runs[0].spec.problem_name
    sense: Sense = PROBLEMS.get(problem).sense
    rows = collect(runs, target)
    table = stats(rows, sense)
    out.mkdir(parents=True, exist_ok=True)
    results_csv = out / "results.csv"
    write_results_csv(rows, results_csv)
    seeds = len({r.seed for r in runs})
    summary_md = out / "summary.md"
    summary_md.write_text(
        summary_markdown(table, problem=problem, sense=sense, seeds=seeds, budget=budget, target=target)
    )
    curves: Path | None = out / "curves.png"
    try:
        ok = [r for r in rows if r.status == "ok"]
        folders = {a: [Path(r.run_dir) for r in ok if r.algo == a] for a in dict.fromkeys(r.algo for r in ok)}
        curves = plot_curves(folders, out / "curves.png", problem=problem, sense=sense, seeds=seeds)
    except Exception as exc:  # a plot must never cost the table
        warnings.warn(f"curves.png not written: {exc}", stacklevel=2)
        curves = None
    return BenchResult(rows, table, results_csv, summary_md, curves, target)


def print_result(result: BenchResult, console: Any) -> None:
    """The ranked per-algorithm table (summary.md's), failures, and where the files are."""
    seeds = result.table[0].runs if result.table else 0
    title = f"{seeds} seeds, ranked by median {_metric(result.table)}"
    console.print(tables.rich_table(*ranking(result.table, result.target), title=title, left=("algorithm",)))
    for r in result.rows:
        if r.status != "ok":
            console.print(f"[red]failed[/]: {r.algo} seed {r.seed}: {r.error} ({r.run_dir})")
    files = [result.results_csv, result.summary_md, *([result.curves_png] if result.curves_png else [])]
    console.print("wrote " + ", ".join(str(f) for f in files))
