"""Rich progress display for the run loop."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gfo.loop import Callback


class ProgressBar(Callback):
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None

    def on_start(self, spec: Any, problem: Any, algorithm: Any, start_generation: int) -> None:
        facts = ", ".join(f"{k}={v}" for k, v in problem.describe().items())
        self.console.print(
            f"[bold]{spec.algorithm}[/] on [bold]{spec.problem_name}[/]: popsize {algorithm.popsize}, {facts}"
            + (f" (resuming at generation {start_generation})" if start_generation else "")
        )
        self._progress = Progress(
            TextColumn("gen"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._task = self._progress.add_task(
            "run", total=spec.run.generations, completed=start_generation, status="evaluating..."
        )
        self._progress.start()

    def on_generation(self, record: dict[str, Any]) -> None:
        assert self._progress is not None
        status = f"best {record['best']:.4g}  mean {record['mean']:.4g}  so far {record['best_so_far']:.4g}"
        if "heldout_initial" in record:
            status += f"  held-out at start {record['heldout_initial']:.4g}"
        if "heldout" in record:
            status += f"  held-out {record['heldout']['center']:.4g}"
            for name in heldout_metrics(record):  # the problem's own, e.g. an LLM's KL to its start
                status += f"  {name.removeprefix('heldout_').replace('_', ' ')} {record[name]:.4g}"
        for name in counters(record):  # the problem's own, e.g. an LLM task's generated tokens
            status += f"  {record[f'{name}_per_s']:.0f} {name.replace('_', ' ')}/s"
        self._progress.update(self._task, completed=record["generation"] + 1, status=status)
        if not self.console.is_terminal:
            self.console.print(f"generation {record['generation']}: {status}", soft_wrap=True)  # a log line

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_end(self, summary: dict[str, Any]) -> None:
        self.close()


def heldout_metrics(record: dict[str, Any]) -> list[str]:
    """The problem's numbers about the centre at a held-out evaluation: the loop logs each as
    `heldout_<name>`, beside `heldout` (the scores) and `heldout_initial` (the start's score)."""
    return [k for k in record if k.startswith("heldout_") and k != "heldout_initial"]


def counters(record: dict[str, Any]) -> list[str]:
    """The counters in a metrics record: the loop logs each as NAME, NAME_per_s and NAME_total."""
    return [k for k in record if f"{k}_per_s" in record and f"{k}_total" in record]
