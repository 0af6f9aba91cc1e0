"""PNG plots a person can read at a glance: titles, units, legends."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


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
