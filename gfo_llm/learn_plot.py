"""The picture of a `gfo learn` result: one measure per axis.

Left, what the search selects on: the held-out mean reward of the centre and of each generation's
best candidate on the search's selection items, against training completions (references scored,
for `problem.fitness=likelihood`). Right, what proves it: strict accuracy (reward 1) of the base
model, the start and the final adapter on the fresh items, with Wilson 95% intervals and the paired
p-value of final against start. Mean reward and strict accuracy differ (partial credit), so they
never share an axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result.get("heldout_curve") or []
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    settings = result["settings"]
    if curve:
        x = [p["completions"] for p in curve]
        left.plot(x, [p["center"] for p in curve], "o-", label="centre")
        left.plot(x, [p["best"] for p in curve], "s--", label="generation's best candidate")
        left.legend(fontsize=8)
    else:
        left.text(0.5, 0.5, "no held-out curve (GRPO)", ha="center", va="center", transform=left.transAxes)
    selection = settings["search"].get("eval_limit", "the")
    left.set_ylabel(f"mean reward on {selection} held-out selection items")
    scored = "references scored" if result.get("completions") is None else "training completions"
    left.set_xlabel(scored)
    left.set_title(f"the search: {settings['algo']}, {settings['popsize']} candidates", fontsize=10)

    vs_start, vs_base = result["final_vs_start"], result["final_vs_base"]
    names = ["base", "start", "final"]
    accuracy = [vs_base["acc_b"], vs_start["acc_b"], vs_start["acc_a"]]
    intervals = [vs_base["ci_b"], vs_start["ci_b"], vs_start["ci_a"]]
    errors = [[a - lo for a, (lo, _) in zip(accuracy, intervals, strict=True)],
              [hi - a for a, (_, hi) in zip(accuracy, intervals, strict=True)]]  # fmt: skip
    bars = right.bar(names, accuracy, yerr=errors, capsize=4, color=["#999999", "#7799cc", "#44aa66"])
    for bar, value in zip(bars, accuracy, strict=True):
        right.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                       xytext=(0, 3), textcoords="offset points", fontsize=8)  # fmt: skip
    right.set_ylabel(f"strict accuracy on {result['n_items']} fresh items")
    right.set_title(f"fresh items: final vs start p = {result['p_final_vs_start']:.2g}", fontsize=10)
    right.set_ylim(0, min(1.0, max(hi for _, hi in intervals) * 1.25 + 0.02))
    fig.suptitle(f"gfo learn --recipe {result['recipe']} ({result['method']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
