"""What a study reports: `trials.csv`, and the trials table printed at the end of `gfo tune`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gfo import tables
from gfo.problem import Sense

if TYPE_CHECKING:
    from gfo.tune._study import TrialRow, TuneResult


def write_trials_csv(rows: list[TrialRow], param_names: list[str], path: Path) -> None:
    names = list(dict.fromkeys([*param_names, *(k for r in rows for k in r.params)]))
    counters = list(dict.fromkeys(k for r in rows for k in r.counters))  # whatever the problem counts
    header = ["trial", "state", "value", "defaults", "last_generation", "duration_s"]
    tables.write_csv(
        path,
        [*header, *counters, *names, "run_dir", "error"],
        (
            [
                r.number,
                r.state,
                r.value,
                r.defaults,
                r.last_generation,
                None if r.duration_s is None else f"{r.duration_s:.2f}",
                *(r.counters.get(k) for k in counters),
                *(r.params.get(n) for n in names),
                r.run_dir,
                r.error,
            ]
            for r in rows
        ),
    )


def ranked(rows: list[TrialRow], sense: Sense) -> list[TrialRow]:
    """Completed trials best first, then pruned (latest generation first), then the rest."""

    def key(r: TrialRow) -> tuple[int, float]:
        if r.state == "COMPLETE" and r.value is not None:
            return (0, r.value if sense == "min" else -r.value)
        if r.state == "PRUNED":
            return (1, -(r.last_generation or 0))
        return (2, r.number)

    return sorted(rows, key=key)


def print_result(result: TuneResult, console: Any) -> None:
    """The trials table (best first) and the defaults-versus-best line."""
    shown = ranked(result.rows, result.sense)
    cells = [
        [
            f"{r.number}{'*' if r.defaults else ''}",
            r.state.lower() + (f" at gen {r.last_generation}" if r.state == "PRUNED" else ""),
            tables.fmt(r.value, 6),
            "  ".join(f"{k}={_param_text(v)}" for k, v in r.params.items()),
        ]
        for r in shown[:20]
    ]
    title = f"study {result.study}: {result.finished} finished trials, best first"
    table = tables.rich_table(
        ["trial", "state", "value", "hyperparameters"],
        cells,
        title=title,
        caption="* the algorithm's defaults",
        left=("state", "hyperparameters"),
    )
    console.print(table)
    if len(shown) > 20:
        console.print(f"({len(shown) - 20} more in {result.trials_csv})")
    best = result.best
    if result.defaults is not None and result.defaults.value is not None:
        console.print(
            f"defaults (trial {result.defaults.number}): {result.defaults.value:.6g}   "
            f"best (trial {best.number}): {best.value:.6g}   "
            f"({'lower' if result.sense == 'min' else 'higher'} is better)"
        )
    else:
        console.print(f"best (trial {best.number}): {best.value:.6g}; the defaults trial did not complete")
    for line in (
        f"ran {result.ran} new trial(s); storage {result.storage}",
        f"best config: {result.best_toml}  (gfo run --config {result.best_toml})",
        f"all trials: {result.trials_csv}",
    ):
        console.print(line, soft_wrap=True, markup=False)


def _param_text(value: Any) -> str:
    if value is None or isinstance(value, float):
        return tables.fmt(value)
    return str(value)
