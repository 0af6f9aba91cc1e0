"""The figures of a report as plain numbers: every curve a `Series` read from the runs' metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gfo.report._runs import Run, counter_names

#: Runs drawn with their mean and spread as well as their best so far; more would hide each other.
DETAILED_RUNS = 3
#: The metrics the throughput figure draws, by the end of their name, whatever the problem counts.
RATE, FRACTION = "_per_s", "_fraction"
#: Line styles telling apart several rates of one run (they share its colour).
_STYLES = ("-", "--", ":", "-.")


@dataclass
class Series:
    """One curve: `kind` "line", "points" or "band" (between `y` and `y2`)."""

    gid: str  # "<run label>|<quantity>": what a test or a reader looks a curve up by
    label: str | None
    x: list[float]
    y: list[float]
    kind: str = "line"
    y2: list[float] | None = None
    group: str = ""
    style: str = "-"


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    log_y: bool = False


@dataclass
class Figure:
    key: str
    title: str
    panels: list[Panel]
    note: str = ""


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def _column(records: list[dict[str, Any]], key: str) -> list[float]:
    out = []
    for r in records:
        value: Any = r
        for part in key.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        out.append(_num(value))
    return out


def _axes(runs: list[Run]) -> list[tuple[str, str]]:
    """x axes: (key, label). Generations; the work done: the total of every counter each record of
    every run carries (an LLM task's answers and tokens), in name order, else evaluations; wall time."""
    shared = set.intersection(*(set(counter_names(r)) for r in runs)) if runs else set()
    work = [
        (f"{k}_total", f"{k.replace('_', ' ')} (total counted)")
        for k in sorted(shared)
        if all(r.records and all(f"{k}_total" in rec for rec in r.records) for r in runs)
    ]
    return [
        ("generations", "generations completed"),
        *(work or [("evaluations", "evaluations (candidates scored)")]),
        ("wall_s", "wall time (s, search loop)"),
    ]


def _metrics(runs: list[Run], suffix: str) -> list[str]:
    """The numeric metrics named `*<suffix>` any record carries, in the order they first appear."""
    return list(
        dict.fromkeys(
            k
            for run in runs
            for r in run.records
            for k, v in r.items()
            if k.endswith(suffix) and isinstance(v, int | float) and not isinstance(v, bool)
        )
    )


def _x(run: Run, key: str) -> list[float]:
    if key == "generations":
        return [_num(r.get("generation")) + 1 for r in run.records]
    return _column(run.records, key)


def figures(runs: list[Run]) -> list[Figure]:
    """Every figure of the report, as numbers."""
    detailed = len(runs) <= DETAILED_RUNS
    out = [_fitness(runs, detailed)]
    if any("heldout" in r or "heldout_initial" in r for run in runs for r in run.records):
        out.append(_heldout(runs))
    if _metrics(runs, RATE) or _metrics(runs, FRACTION):
        out.append(_throughput(runs))
    if any("stepsize_mean" in r for run in runs for r in run.records):
        out.append(_stepsize(runs, detailed))
    return out


def _fitness(runs: list[Run], detailed: bool) -> Figure:
    sense = runs[0].sense
    ylabel = f"fitness ({'lower' if sense == 'min' else 'higher'} is better)"
    panels = []
    for key, xlabel in _axes(runs):
        panel = Panel(f"training fitness against {xlabel.split(' (')[0]}", xlabel, ylabel)
        for run in runs:
            x = _x(run, key)
            name = "" if len(runs) == 1 else f"{run.label}: "
            if detailed:
                panel.series.append(
                    Series(f"{run.label}|spread", f"{name}spread (best to worst)", x,
                           _column(run.records, "best"), "band", _column(run.records, "worst"), run.group)
                )  # fmt: skip
                panel.series.append(
                    Series(f"{run.label}|mean", f"{name}generation mean", x,
                           _column(run.records, "mean"), group=run.group, style="--")
                )  # fmt: skip
            if len(runs) == 1:
                panel.series.append(
                    Series(f"{run.label}|best", "generation best", x, _column(run.records, "best"),
                           group=run.group, style=":")
                )  # fmt: skip
            panel.series.append(
                Series(f"{run.label}|best_so_far", f"{name}best so far" if detailed else run.label, x,
                       _column(run.records, "best_so_far"), group=run.group)
            )  # fmt: skip
        values = [v for s in panel.series for v in (*s.y, *(s.y2 or [])) if math.isfinite(v)]
        panel.log_y = sense == "min" and bool(values) and min(values) > 0
        panels.append(panel)
    note = "" if detailed else "best so far of each run (mean and spread are drawn for up to 3 runs)"
    return Figure("fitness", "Training fitness (what the search optimizes)", panels, note)


def _heldout(runs: list[Run]) -> Figure:
    panels = []
    for key, xlabel in _axes(runs):
        panel = Panel(f"held-out score against {xlabel.split(' (')[0]}", xlabel, "held-out score")
        for run in runs:
            name = "" if len(runs) == 1 else f"{run.label}: "
            held = [r for r in run.records if "heldout" in r]
            start = [_num(r["heldout_initial"]) for r in run.records if "heldout_initial" in r]
            sub = Run(run.label, run.group, run.path, held, [], None, {}, run.sense)
            x = ([0.0] if start else []) + _x(sub, key)
            panel.series.append(
                Series(f"{run.label}|heldout/center", f"{name}centre", x,
                       start + _column(held, "heldout/center"), "points", group=run.group, style="o-")
            )  # fmt: skip
            panel.series.append(
                Series(f"{run.label}|heldout/best", f"{name}generation's best candidate", _x(sub, key),
                       _column(held, "heldout/best"), "points", group=run.group, style="s--")
            )  # fmt: skip
        panels.append(panel)
    note = "the first point (at 0) is the starting centre, scored before generation 0"
    return Figure("heldout", "Held-out score (fixed items the search never trains on)", panels, note)


def _throughput(runs: list[Run]) -> Figure:
    """Every rate (`*_per_s`: a counter per second of evaluation) in one panel, every fraction
    (`*_fraction`: a population mean the problem reports) in another."""
    panels = []
    for suffix, title, ylabel in (
        (RATE, "rates (per second of evaluation)", "per second"),
        (FRACTION, "fractions (population mean)", "fraction"),
    ):
        keys = _metrics(runs, suffix)
        if not keys:
            continue
        panel = Panel(title, "generations completed", ylabel)
        for run in runs:
            for i, key in enumerate(keys):
                what = key.removesuffix(suffix).replace("_", " ")
                label = what if len(keys) > 1 else ""
                if len(runs) > 1:
                    label = f"{run.label}: {label}" if label else run.label
                panel.series.append(
                    Series(f"{run.label}|{key}", label or None, _x(run, "generations"),
                           _column(run.records, key), group=run.group, style=_STYLES[i % len(_STYLES)])
                )  # fmt: skip
        values = [v for s in panel.series for v in s.y if math.isfinite(v)]
        panel.log_y = bool(values) and min(values) > 0 and max(values) / min(values) > 100
        panels.append(panel)
    return Figure("throughput", "Throughput (the problem's rates and fractions)", panels)


def _stepsize(runs: list[Run], detailed: bool) -> Figure:
    panel = Panel("search distribution's step size", "generations completed", "step size (stdev)")
    for run in runs:
        x = _x(run, "generations")
        name = "" if len(runs) == 1 else f"{run.label}: "
        if detailed:
            panel.series.append(
                Series(f"{run.label}|stepsize_range", f"{name}min to max over coordinates", x,
                       _column(run.records, "stepsize_min"), "band", _column(run.records, "stepsize_max"),
                       run.group)
            )  # fmt: skip
        panel.series.append(
            Series(f"{run.label}|stepsize_mean", f"{name}mean", x, _column(run.records, "stepsize_mean"),
                   group=run.group)
        )  # fmt: skip
    values = [v for s in panel.series for v in (*s.y, *(s.y2 or [])) if math.isfinite(v)]
    panel.log_y = bool(values) and min(values) > 0 and max(values) / min(values) > 100
    return Figure("stepsize", "Step size", [panel])
