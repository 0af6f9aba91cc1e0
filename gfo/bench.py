"""Benchmark algorithms on one problem: every algorithm x seed is a real run in `OUT/<algo>/seed-<k>/`.

Runs are resumable: a run with `summary.json` is done and skipped (unless a signal stopped it:
then its summary holds the results so far), one with a checkpoint is continued. The table
(`results.csv`) is read back from each run's `summary.json` and `metrics.jsonl`, never from
memory, so it says exactly what the run folders say. Whatever additive counters the problem's
evaluations carry (an LLM task's generated tokens and completions) get a column each, by their name.
"""

from __future__ import annotations

import csv
import json
import math
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gfo import checkpoint
from gfo.errors import ConfigError, GfoError
from gfo.loop import SIGNAL_REASONS, Callback, Interrupted, prepare_run_dir, run
from gfo.problem import Sense, better
from gfo.registry import ALGORITHMS, PROBLEMS, unknown_name
from gfo.spec import RunSpec, resolve

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
class BenchRun:
    """One planned run of the grid."""

    algo: str
    seed: int
    spec: RunSpec
    run_dir: Path


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


def parse_algos(text: str) -> list[str]:
    """`"es, pgpe,cmaes"` -> names, each checked against the registry (one-line error on a bad one)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--algos is empty; give a comma-separated list, e.g. --algos es,pgpe,cmaes")
    known = ALGORITHMS.names()
    for name in names:
        if name not in known:
            raise GfoError(unknown_name("algorithm", name, known) + " in --algos")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--algos lists {', '.join(duplicates)} twice; give each algorithm once")
    return names


def plan(
    algos: Sequence[str],
    problem: str | None,
    *,
    seeds: int,
    out: Path,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    budget_evals: int | None = None,
    generations: int | None = None,
    force: bool = False,
) -> list[BenchRun]:
    """Resolve and validate every run before any of them starts.

    Seeds are `run.seed + k` for k < `seeds`. `budget_evals` stops each run at the first generation
    that reaches N evaluations (a run may overshoot by less than one population).
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1; got {seeds}, e.g. --seeds 5")
    if budget_evals is not None and generations is not None:
        raise ConfigError("give one budget: --budget-evals N or --generations G, not both")
    if budget_evals is not None and budget_evals < 1:
        raise ConfigError(f"--budget-evals must be >= 1; got {budget_evals}")
    if generations is not None and generations < 1:
        raise ConfigError(f"--generations must be >= 1; got {generations}")
    budget = []
    if budget_evals is not None:
        # Every population has >= 2 members, so N generations never bind before N evaluations.
        budget = [f"run.max_evaluations={budget_evals}", f"run.generations={budget_evals}"]
    elif generations is not None:
        budget = [f"run.generations={generations}"]
    runs = []
    for algo in algos:
        base = resolve(algo, problem, config_file=config_file, overrides=[*overrides, *budget])
        for k in range(seeds):
            seed = base.run.seed + k
            spec = resolve(
                algo, problem, config_file=config_file, overrides=[*overrides, *budget, f"run.seed={seed}"]
            )
            runs.append(BenchRun(algo, seed, spec, out / algo / f"seed-{seed}"))
    problems = {r.spec.problem_name for r in runs}
    if len(problems) != 1:
        raise ConfigError(f"a benchmark compares one problem; got {', '.join(sorted(problems))}")
    for r in runs:
        _check_run_dir(r, force)
    return runs


def _check_run_dir(r: BenchRun, force: bool) -> None:
    saved = r.run_dir / "config.toml"
    if force or not saved.exists():
        return
    if saved.read_text() != r.spec.to_toml():
        raise GfoError(
            f"{r.run_dir} holds a run with other settings (its config.toml differs); "
            "rerun with the same options, use another --out, or --force to start over"
        )


def run_all(
    runs: Sequence[BenchRun],
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
    callbacks: Callable[[RunSpec, Path], list[Callback]] | None = None,
) -> None:
    """Run every planned run in turn; a failure is recorded (`error.txt`) and the others go on.
    `callbacks(spec, run_dir)` adds loop callbacks to each run (experiment tracking)."""
    for i, r in enumerate(runs, 1):
        tag = f"[{i}/{len(runs)}] {r.algo} seed {r.seed}"
        error_file = r.run_dir / "error.txt"
        if not force and _finished(r.run_dir):
            log(f"{tag}: done before, skipped")
            continue
        resume = not force and checkpoint.exists(r.run_dir)
        try:
            prepare_run_dir(r.run_dir, resume=resume, force=not resume)
            error_file.unlink(missing_ok=True)
            extra = callbacks(r.spec, r.run_dir) if callbacks else None
            summary = run(r.spec, r.run_dir, resume=resume, callbacks=extra)
        except Interrupted:
            raise
        except Exception as exc:
            r.run_dir.mkdir(parents=True, exist_ok=True)
            error_file.write_text("".join(traceback.format_exception(exc)))
            log(f"{tag}: failed: {type(exc).__name__}: {exc}")
            continue
        how = "resumed, " if resume else ""
        log(f"{tag}: {how}best {summary['best']:.6g} after {summary['evaluations']} evaluations")


def _finished(run_dir: Path) -> bool:
    """A run that ended (a signal's stop also writes summary.json, with the results so far)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return summary.get("stop_reason") not in SIGNAL_REASONS


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
    for record in _records(metrics):
        so_far = record["best_so_far"]  # null while every value so far was non-finite
        if so_far is not None and not math.isnan(so_far) and not better(target, so_far, sense):
            return int(record["evaluations"])
    return None


def _records(metrics: Path) -> list[dict[str, Any]]:
    if not metrics.exists():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


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
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*COLUMNS, *names, *COLUMNS_AFTER_COUNTERS])
        for r in rows:
            writer.writerow(
                [
                    *(_cell(getattr(r, c)) for c in COLUMNS),
                    *(_cell(r.counters.get(k)) for k in names),
                    *(_cell(getattr(r, c)) for c in COLUMNS_AFTER_COUNTERS),
                ]
            )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def summary_markdown(
    table: Sequence[AlgoStats], *, problem: str, sense: Sense, seeds: int, budget: str, target: float | None
) -> str:
    direction = "lower" if sense == "min" else "higher"
    metric = "held-out best" if table and table[0].metric == "heldout_best" else "final best"
    lines = [
        f"# Benchmark: {problem}",
        "",
        f"{len(table)} algorithms x {seeds} seeds, budget {budget}. Ranked by the median {metric} "
        f"over seeds ({direction} is better); IQR is the 25th to 75th percentile.",
        "",
    ]
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
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, s in enumerate(table, 1):
        cells = [
            str(i),
            s.algo,
            f"{s.ok}/{s.runs}",
            _fmt(s.median),
            f"{_fmt(s.q1)} - {_fmt(s.q3)}",
            _fmt(s.median_evaluations, 6),
            _fmt(s.median_wall_s, 3),
        ]
        if target is not None:
            cells += [f"{s.hits}/{s.ok}", _fmt(s.median_evals_to_target, 6)]
        cells += [_fmt(s.median_counters.get(k), 6) for k in counters]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per-run numbers: results.csv. Curves: curves.png.", ""]
    return "\n".join(lines)


def plot_curves(rows: Sequence[Row], path: Path, *, problem: str, sense: Sense) -> Path:
    """Median best-so-far with an inter-quartile band per algorithm, against evaluations and wall time."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data: dict[str, list[list[dict[str, Any]]]] = {}
    for algo in dict.fromkeys(r.algo for r in rows):
        mine = [r for r in rows if r.algo == algo and r.status == "ok"]
        curves = [c for c in (_records(Path(r.run_dir) / "metrics.jsonl") for r in mine) if c]
        if curves:
            data[algo] = curves
    # Wall times of different algorithms can differ by orders of magnitude (a d^2 covariance update
    # against a diagonal one): then a log axis keeps every curve readable.
    walls = [c[i]["wall_s"] for curves in data.values() for c in curves for i in (0, -1)]
    log_wall = bool(walls) and min(walls) > 0 and max(walls) / min(walls) > 100

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    all_values: list[float] = []
    seeds = len({r.seed for r in rows})
    for algo, curves in data.items():
        for ax, key in zip(axes, ("evaluations", "wall_s"), strict=True):
            xs = [np.array([rec[key] for rec in c], dtype=float) for c in curves]
            ys = [np.array([rec["best_so_far"] for rec in c], dtype=float) for c in curves]
            # A finished run keeps its final best-so-far: at time t that is what it would have given.
            end = max(float(x[-1]) for x in xs)
            if key == "wall_s" and log_wall:
                grid = np.geomspace(min(float(x[0]) for x in xs), end, 300)
            else:
                grid = np.linspace(0.0, end, 300)
            stacked = np.stack([_step_at(x, y, grid) for x, y in zip(xs, ys, strict=True)])
            with warnings.catch_warnings():  # grid points before any run's first record are all NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                q1, med, q3 = np.nanpercentile(stacked, [25, 50, 75], axis=0)
            (line,) = ax.plot(grid, med, lw=2, label=f"{algo} ({len(curves)} runs)")
            ax.fill_between(grid, q1, q3, color=line.get_color(), alpha=0.2, lw=0)
            all_values += [v for v in stacked.ravel().tolist() if math.isfinite(v)]
    if log_wall:
        axes[1].set_xscale("log")
    positive = bool(all_values) and min(all_values) > 0
    ylabel = f"best-so-far fitness ({'lower' if sense == 'min' else 'higher'} is better)"
    for ax, xlabel, title in zip(
        axes,
        ("evaluations (candidates scored)", "wall time (s, search loop only)"),
        ("against evaluations", "against wall time"),
        strict=True,
    ):
        if sense == "min" and positive:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{problem}: {title}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"median over up to {seeds} seeds; band: inter-quartile range", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _step_at(x: Any, y: Any, grid: Any) -> Any:
    """Best-so-far is a step function: its value at g is that of the last record at or before g
    (NaN before the first one)."""
    import numpy as np

    idx = np.searchsorted(x, grid, side="right") - 1
    out = y[np.clip(idx, 0, len(y) - 1)].astype(float)
    out[idx < 0] = np.nan
    return out


@dataclass(frozen=True)
class BenchResult:
    rows: list[Row]
    table: list[AlgoStats]
    results_csv: Path
    summary_md: Path
    curves_png: Path | None


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
        plot_curves(rows, out / "curves.png", problem=problem, sense=sense)
    except Exception as exc:  # a plot must never cost the table
        warnings.warn(f"curves.png not written: {exc}", stacklevel=2)
        curves = None
    return BenchResult(rows, table, results_csv, summary_md, curves)


def budget_text(spec: RunSpec) -> str:
    if spec.run.max_evaluations is not None:
        return f"{spec.run.max_evaluations} evaluations"
    return f"{spec.run.generations} generations"


def print_result(result: BenchResult, console: Any) -> None:
    """The ranked per-algorithm table, failures, and where the files are."""
    from rich.table import Table

    metric = "held-out best" if result.table and result.table[0].metric == "heldout_best" else "final best"
    table = Table(title=f"{result.table[0].runs if result.table else 0} seeds, ranked by median {metric}")
    for col in ("rank", "algorithm", "ok", "median", "25%", "75%", "evals", "wall s"):
        table.add_column(col, justify="left" if col == "algorithm" else "right")
    for i, s in enumerate(result.table, 1):
        table.add_row(
            str(i),
            s.algo,
            f"{s.ok}/{s.runs}",
            _fmt(s.median),
            _fmt(s.q1),
            _fmt(s.q3),
            _fmt(s.median_evaluations, 6),
            _fmt(s.median_wall_s, 3),
        )
    console.print(table)
    for r in result.rows:
        if r.status != "ok":
            console.print(f"[red]failed[/]: {r.algo} seed {r.seed}: {r.error} ({r.run_dir})")
    files = [result.results_csv, result.summary_md, *([result.curves_png] if result.curves_png else [])]
    console.print("wrote " + ", ".join(str(f) for f in files))
