"""The run folders a report is made of, read back: found in the paths given, one `Run` each.

A path is a run folder (config.toml with metrics.jsonl beside it) or a folder holding run folders
(a bench or tune folder); a run still in progress reads as far as it has got.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfo.errors import GfoError
from gfo.strictjson import read_jsonl


@dataclass
class Run:
    """One run folder, read back."""

    label: str
    group: str  # runs of one group share a colour (a bench's algorithm)
    path: Path
    records: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    summary: dict[str, Any] | None
    config: dict[str, Any]
    sense: str


def find_runs(paths: Sequence[Path]) -> list[Run]:
    """The runs in `paths`: each is a run folder, or a folder holding run folders (bench, tune)."""
    runs: list[Run] = []
    for root in paths:
        if not root.is_dir():
            raise GfoError(f"{root} is not a directory; give run folders (or a bench or tune folder)")
        found = (
            [root]
            if _is_run(root)
            else sorted(p.parent for p in root.rglob("metrics.jsonl") if _is_run(p.parent))
        )
        if not found:
            raise GfoError(f"{root} holds no gfo run (no config.toml with metrics.jsonl beside it)")
        for path in found:
            rel = path.relative_to(root).parts
            label = "/".join(rel) if rel else path.resolve().name
            if len(paths) > 1 and rel:
                label = f"{root.name}/{label}"
            group = "/".join(rel[:-1]) if len(rel) > 1 else label
            runs.append(_read_run(path, label, group))
    labels = [r.label for r in runs]
    for i, run in enumerate(runs):
        if labels.count(run.label) > 1:
            run.label = run.group = f"{run.label} ({i + 1})"
    return runs


def _is_run(path: Path) -> bool:
    return (path / "config.toml").is_file() and (path / "metrics.jsonl").is_file()


def _read_run(path: Path, label: str, group: str) -> Run:
    summary = None
    if (path / "summary.json").exists():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except ValueError:
            summary = None
    with (path / "config.toml").open("rb") as fh:
        config = tomllib.load(fh)
    return Run(
        label=label,
        group=group,
        path=path,
        records=read_jsonl(path / "metrics.jsonl"),
        samples=read_jsonl(path / "samples.jsonl"),
        summary=summary,
        config=config,
        sense=(summary or {}).get("sense") or _sense(config.get("problem_name", "")),
    )


def _sense(problem: str) -> str:
    from gfo.registry import PROBLEMS

    try:
        return str(PROBLEMS.get(problem).sense)
    except Exception:
        return "min"


def best_generation(run: Run) -> int | None:
    """The generation whose solution the run kept: the held-out best's, else the training best's."""
    chosen = (run.summary or {}).get("heldout_generation")
    if isinstance(chosen, int) and chosen >= 0:
        return chosen
    scored = [(r["best"], r["generation"]) for r in run.records if isinstance(r.get("best"), int | float)]
    if not scored:
        return None
    pick = min(scored) if run.sense == "min" else max(scored, key=lambda t: (t[0], -t[1]))
    return int(pick[1])


def counter_names(run: Run) -> list[str]:
    """The additive counters the run's problem reports, by name (whatever they are: an LLM task
    counts its answers and tokens, a test function nothing): summary.json's, or for a run without
    one, every metric its records log with a rate and a total (`<name>_per_s`, `<name>_total`)."""
    if run.summary is not None and isinstance(run.summary.get("counters"), dict):
        return list(run.summary["counters"])
    return list(dict.fromkeys(k for r in run.records for k in r if f"{k}_per_s" in r and f"{k}_total" in r))
