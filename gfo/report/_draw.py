"""Drawing a report's figures with matplotlib: one colour per group of runs, PNG bytes."""

from __future__ import annotations

import io
from typing import Any

from gfo.report._figures import Figure
from gfo.report._runs import Run


def draw(figure: Figure, runs: list[Run]) -> Any:
    """A matplotlib figure of `figure`: one colour per group, legends on every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = list(dict.fromkeys(r.group for r in runs))
    palette = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    colour = {g: palette(i % palette.N) for i, g in enumerate(groups)}
    single = len(runs) == 1
    width = 4.6 * len(figure.panels) if len(figure.panels) > 1 else 7.5
    fig, axes = plt.subplots(1, len(figure.panels), figsize=(width, 3.9), dpi=100, squeeze=False)
    for ax, panel in zip(axes[0], figure.panels, strict=True):
        labelled: set[tuple[str, str]] = set()
        for i, s in enumerate(panel.series):
            c = palette(i % palette.N) if single else colour.get(s.group, "black")
            label = s.label
            run, quantity = s.gid.split("|", 1)
            if not single and s.group != run:  # one of several runs of a group: one legend entry
                count = sum(r.group == s.group for r in runs)
                what = (s.label or "").rpartition(": ")[2] if ": " in (s.label or "") else ""
                label = (
                    None if (s.group, quantity) in labelled else f"{s.group} ({count} runs) {what}".strip()
                )
                labelled.add((s.group, quantity))
            if s.kind == "band":
                ax.fill_between(s.x, s.y, s.y2 or s.y, color=c, alpha=0.15, lw=0, label=label, gid=s.gid)
            else:
                ax.plot(
                    s.x, s.y, s.style, color=c, label=label, lw=2 if s.style == "-" else 1, ms=4, gid=s.gid
                )
        if panel.log_y:
            ax.set_yscale("log")
        if panel.xlabel.startswith("generations"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if any(s.label for s in panel.series):
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
