"""PNG plots a person can read at a glance: titles, units, legends. Every matplotlib figure gfo
writes is drawn here (`curve.png` of a run, `curves.png` of a benchmark), except the HTML report's,
which `gfo.report._draw` draws from its own numbers."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gfo.strictjson import read_jsonl

if TYPE_CHECKING:
    from gfo.problem import Sense


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _none_to_nan(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: math.nan if v is None else v for k, v in obj.items()}


def plot_run(run_dir: Path) -> Path:
    """`curve.png`: population best / mean and best-so-far against evaluations, held-out points if any."""
    # Non-finite numbers are null in the file; matplotlib leaves NaN out of a line.
    records = [
        json.loads(line, object_hook=_none_to_nan)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line
    ]
    summary = json.loads((run_dir / "summary.json").read_text())
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    x = [r["evaluations"] for r in records]
    ax.plot(x, [r["best_so_far"] for r in records], label="best so far", lw=2)
    ax.plot(x, [r["best"] for r in records], label="generation best", lw=1, alpha=0.7)
    ax.plot(x, [r["mean"] for r in records], label="generation mean", lw=1, alpha=0.7)
    held = [(r["evaluations"], r["heldout"]) for r in records if "heldout" in r]
    if records and "heldout_initial" in records[0]:
        ax.plot([0], [records[0]["heldout_initial"]], "D", color="black", label="held-out (start)")
    if held:
        ax.plot([e for e, _ in held], [h["center"] for _, h in held], "o-", label="held-out (centre)")
        ax.plot([e for e, _ in held], [h["best"] for _, h in held], "s--", label="held-out (gen. best)")
    values = [r[k] for r in records for k in ("best", "mean")]
    values = [v for v in values if math.isfinite(v)]
    if summary["sense"] == "min" and values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("evaluations (candidates scored)")
    ax.set_ylabel(f"fitness ({'lower' if summary['sense'] == 'min' else 'higher'} is better)")
    ax.set_title(f"{summary['algorithm']} on {summary['problem']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = run_dir / "curve.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(
    runs: Mapping[str, Sequence[Path]], path: Path, *, problem: str, sense: Sense, seeds: int
) -> Path:
    """`curves.png` of `gfo bench`: per algorithm (its run folders in `runs`), the median best-so-far
    with an inter-quartile band, against evaluations and against wall time."""
    import numpy as np

    plt = _pyplot()
    data: dict[str, list[list[dict[str, Any]]]] = {}
    for algo, folders in runs.items():
        curves = [c for c in (read_jsonl(f / "metrics.jsonl") for f in folders) if c]
        if curves:
            data[algo] = curves
    # Wall times of different algorithms can differ by orders of magnitude (a d^2 covariance update
    # against a diagonal one): then a log axis keeps every curve readable.
    walls = [c[i]["wall_s"] for curves in data.values() for c in curves for i in (0, -1)]
    log_wall = bool(walls) and min(walls) > 0 and max(walls) / min(walls) > 100

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    all_values: list[float] = []
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
