"""`Tracking`: the loop callback that feeds the chosen trackers and makes a resume continue them."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gfo import checkpoint
from gfo.errors import GfoError
from gfo.loop import Callback, Interrupted
from gfo.registry import TRACKERS
from gfo.tracking._base import Group, RunInfo, Tracker, require, scalars, settings

#: In the run directory: each tracker's run id and the last generation it logged.
STATE_FILE = "tracking.json"


class Tracking(Callback):
    """Logs a run to the trackers `names` (any of `gfo.registry.TRACKERS`).

    The loop calls `on_generation` after the generation's checkpoint, so a kill can only leave a
    tracker behind the checkpoint, never ahead of it: on resume the generations it missed are
    logged from metrics.jsonl and samples.jsonl, and none twice. A tracker that fails in the middle
    of a run is dropped with a warning; the search goes on.
    """

    def __init__(
        self,
        names: Sequence[str],
        run_dir: Path,
        *,
        group: Group | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        require(list(names))
        self.names = tuple(names)
        self.run_dir = run_dir
        self.group = group
        self._log = log
        self._trackers: dict[str, Tracker] = {}
        self._state: dict[str, dict[str, Any]] = {}
        self._samples = _Tail(run_dir / "samples.jsonl")

    # ------------------------------------------------------------------ loop hooks

    def on_start(self, spec: Any, problem: Any, algorithm: Any, start_generation: int) -> None:
        saved = _read_state(self.run_dir / STATE_FILE)
        info = RunInfo(
            run_dir=self.run_dir,
            name=self._name(),
            group=self.group,
            params=settings(spec, problem, int(algorithm.popsize)),
            config_toml=spec.to_toml(),
            heldout=problem.heldout_every() > 0,
        )
        for name in self.names:
            mine = saved.get(name, {})
            tracker: Tracker = TRACKERS.get(name)(info, mine)
            try:
                held = tracker.open()
            except GfoError:
                raise
            except Exception as exc:
                raise GfoError(f"--track {name} cannot open its run: {type(exc).__name__}: {exc}") from exc
            self._trackers[name] = tracker
            last = held if held is not None else mine.get("last", -1)
            self._state[name] = {**tracker.state(), "last": last}
            if self._log:
                self._log(tracker.where())
        if any(s["last"] + 1 < start_generation for s in self._state.values()):
            self._catch_up(start_generation)
        else:
            self._samples.read()  # what is there belongs to generations every tracker holds
        self._save()

    def on_generation(self, record: dict[str, Any]) -> None:
        g = record["generation"]
        samples = [s for s in self._samples.read() if s.get("generation") == g]
        self._log_generation(g, scalars(record), samples)
        self._save()

    def on_end(self, summary: dict[str, Any]) -> None:
        exported = summary.get("exported")
        artifact = self.run_dir / exported if exported else self.run_dir / "best.safetensors"
        for name, tracker in self._trackers.items():
            try:
                tracker.finish(summary, artifact if artifact.exists() else None)
            except Exception as exc:
                warnings.warn(f"--track {name}: the summary was not logged: {exc}", stacklevel=2)
        self._trackers = {}
        self._save()

    def on_abort(self, error: BaseException) -> None:
        status = "killed" if isinstance(error, Interrupted | KeyboardInterrupt) else "failed"
        for name, tracker in self._trackers.items():
            try:
                tracker.close(status, f"{type(error).__name__}: {error}")
            except Exception as exc:
                warnings.warn(f"--track {name}: the run was not closed: {exc}", stacklevel=2)
        self._trackers = {}
        self._save()

    # ------------------------------------------------------------------ internals

    def _name(self) -> str:
        run_dir = self.run_dir.resolve()
        if self.group is not None:
            try:
                return "-".join(run_dir.relative_to(self.group.root.resolve()).parts) or run_dir.name
            except ValueError:
                pass
        return run_dir.name

    def _catch_up(self, start_generation: int) -> None:
        """Log the generations before `start_generation` that a tracker does not hold yet."""
        by_generation: dict[int, list[dict[str, Any]]] = {}
        for sample in self._samples.read():
            by_generation.setdefault(sample.get("generation", -1), []).append(sample)
        for record in _read_jsonl(self.run_dir / "metrics.jsonl"):
            g = record.get("generation")
            if isinstance(g, int) and g < start_generation:
                self._log_generation(g, scalars(record), by_generation.get(g, []))

    def _log_generation(self, g: int, values: dict[str, float], samples: list[dict[str, Any]]) -> None:
        for name, tracker in list(self._trackers.items()):
            if g <= self._state[name]["last"]:
                continue  # it holds this generation (a resumed run's values are the same)
            try:
                tracker.log(g, values, samples)
                tracker.flush()
            except Exception as exc:
                warnings.warn(
                    f"--track {name} stopped at generation {g}: {type(exc).__name__}: {exc}; "
                    "the search goes on without it",
                    stacklevel=2,
                )
                del self._trackers[name]
                continue
            self._state[name]["last"] = g

    def _save(self) -> None:
        data = {**_read_state(self.run_dir / STATE_FILE), **self._state}
        checkpoint.atomic_write(self.run_dir / STATE_FILE, (json.dumps(data, indent=2) + "\n").encode())


def callbacks(
    spec: Any, run_dir: Path, *, group: Group | None = None, log: Callable[[str], None] | None = None
) -> list[Callback]:
    """`[Tracking(...)]` for the trackers `spec.run.track` names, `[]` for none."""
    track = tuple(spec.run.track or ())
    return [Tracking(track, run_dir, group=group, log=log)] if track else []


class _Tail:
    """The complete lines a JSONL file gained since the last read (the loop appends to it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [r for r in (_parse(line) for line in data[:end].splitlines()) if r is not None]


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [r for r in (_parse(line) for line in path.read_bytes().splitlines()) if r is not None]


def _read_state(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
