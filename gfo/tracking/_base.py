"""What every tracker shares: the run it follows, the base class, and how records become scalars."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from gfo import config as cfg
from gfo.errors import GfoError
from gfo.registry import TRACKERS


@dataclass(frozen=True)
class Group:
    """Runs tracked side by side (a `gfo tune` study, a `gfo bench` grid). Stores that several runs
    share (MLflow's) live in `root`; `name` is the MLflow experiment and the W&B / Trackio group."""

    name: str
    root: Path


@dataclass(frozen=True)
class RunInfo:
    """What a tracker needs to open its run."""

    run_dir: Path
    name: str  # the run's name in the tracker: the run folder, relative to the group's root
    group: Group | None
    params: dict[str, str | int | float | bool]  # the settings, flat: algorithm, algo.*, problem.*, run.*
    config_toml: str
    heldout: bool  # the problem scores held-out data (the "heldout/..." metrics exist)


class Tracker:
    """One tracking service behind `Tracking`. Every tracker is built as `cls(info, saved)`, where
    `saved` is what its `state()` returned the last time this run directory was tracked, with
    `last`, the last generation it logged (empty for a new tracked run), so that a resume reopens
    the same run."""

    #: The module that must be importable, and the extra that installs it.
    package: ClassVar[str] = ""
    extra: ClassVar[str] = ""

    def __init__(self, info: RunInfo, saved: dict[str, Any]) -> None:
        self.info = info
        self.saved = saved

    def open(self) -> int | None:
        """Create the run or reopen the saved one; return the last generation it already holds if the
        service can tell (else the callback uses the last one it saw logged, kept in its state file)."""
        raise NotImplementedError

    def where(self) -> str:
        """One line for the console: where the run is and how to look at it."""
        raise NotImplementedError

    def log(self, generation: int, values: dict[str, float], samples: list[dict[str, Any]]) -> None:
        """One generation: its scalars (step = generation) and the problem's samples, if any."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make what was logged durable: the callback records it as logged right after."""

    def state(self) -> dict[str, Any]:
        """What reopens this run later (its id); JSON values."""
        return {}

    def finish(self, summary: dict[str, Any], artifact: Path | None) -> None:
        """The run ended: the summary, the exported solution (a directory or a file), close."""
        raise NotImplementedError

    def close(self, status: str, reason: str) -> None:
        """The run stopped early: `status` "killed" (resumable: a signal) or "failed"."""
        raise NotImplementedError


def require(names: tuple[str, ...] | list[str]) -> None:
    """Fail now, before any search, if a tracker's package is missing: one line with the install command."""
    for name in names:
        cls = TRACKERS.get(name)
        if importlib.util.find_spec(cls.package) is None:
            raise GfoError(
                f"--track {name} needs the {cls.package} package, which is not installed; "
                f"install it with: pip install 'gfo[{cls.extra}]'"
            )


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """Every finite number of a metrics.jsonl record, nested keys joined with "/" (`heldout/center`);
    `generation` is the step, not a value. Non-finite values (null in the file) leave a gap."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "generation":
            continue
        if isinstance(value, dict):
            out.update({f"{key}/{sub}": v for sub, v in scalars(value).items()})
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def settings(spec: Any, problem: Any, popsize: int) -> dict[str, str | int | float | bool]:
    """The run's settings as hyperparameters: names as `--set` spells them, plus the population size
    the algorithm chose and the problem's facts (`Problem.describe`)."""
    params: dict[str, Any] = {"algorithm": spec.algorithm, "problem": spec.problem_name}
    for section, config in (("algo", spec.algo), ("problem", spec.problem), ("run", spec.run)):
        params.update({f"{section}.{k}": v for k, v in cfg.to_dict(config).items()})
    params["popsize"] = popsize
    for key, value in problem.describe().items():
        params.setdefault(key, value)
    return {k: _param(v) for k, v in params.items() if v is not None}


def _param(value: Any) -> str | int | float | bool:
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def samples_markdown(generation: int, samples: list[dict[str, Any]]) -> str:
    """A generation's samples as Markdown: text fields in code blocks (prompts hold chat markup)."""
    parts = [f"### generation {generation}"]
    for i, sample in enumerate(samples):
        facts = ", ".join(f"{k} {_short(v)}" for k, v in sample.items() if not _is_text(v))
        parts.append(f"**sample {i}**" + (f" ({facts})" if facts else ""))
        for key, value in sample.items():
            if _is_text(value):
                fence = "````" if "```" in value else "```"
                parts.append(f"{key}:\n\n{fence}\n{value}\n{fence}")
    return "\n\n".join(parts)


def sample_rows(samples: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of a samples table (W&B, Trackio): the union of the samples' keys."""
    columns = list(dict.fromkeys(k for s in samples for k in s if k != "generation"))
    return columns, [[_cell(s.get(c)) for c in columns] for s in samples]


def summary_values(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's finite numbers, as `summary/<key>` metrics."""
    return {f"summary/{k}": v for k, v in scalars(summary).items()}


def _cell(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and (len(value) > 40 or "\n" in value)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
