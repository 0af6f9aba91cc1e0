"""Trackio: its local SQLite store (`$TRACKIO_DIR`, by default in the Hugging Face cache), project gfo;
a Space only where `TRACKIO_SPACE_ID` asks for one. Runs are named after the run folder, with a
suffix where the project already holds that name."""

from __future__ import annotations

import contextlib
import io
import uuid
from pathlib import Path
from typing import Any

from gfo.tracking._base import Tracker, sample_rows, summary_values

PROJECT = "gfo"


class Trackio(Tracker):
    package = "trackio"
    extra = "trackio"

    def open(self) -> int | None:
        import trackio
        from trackio.sqlite_storage import SQLiteStorage

        self.project: str = self.saved.get("project") or PROJECT
        resuming = bool(self.saved.get("name"))
        self.name: str = self.saved.get("name") or self.info.name
        if not resuming and self.name in _runs(self.project):
            self.name = f"{self.name}-{uuid.uuid4().hex[:6]}"
        with _quiet():  # trackio prints its banner on stdout, where gfo prints results
            self.run = trackio.init(
                project=self.project,
                name=self.name,
                group=self.info.group.name if self.info.group else None,
                config=dict(self.info.params),
                resume="allow" if resuming else "never",
                embed=False,
                auto_log_cpu=False,
                auto_log_gpu=False,
            )
        if not resuming:
            return -1
        try:
            last = SQLiteStorage.get_max_step_for_run(self.project, self.name)
        except Exception:  # a store it cannot read back: the state file's count stands
            return None
        return -1 if last is None else int(last)

    def where(self) -> str:
        view = f"trackio show --project {self.project}"
        return f"trackio: run {self.name} in project {self.project} (view: {view})"

    def log(self, generation: int, values: dict[str, float], samples: list[dict[str, Any]]) -> None:
        import trackio

        data: dict[str, Any] = dict(values)
        if samples:
            columns, rows = sample_rows(samples)
            data["samples"] = trackio.Table(columns=columns, data=rows)
        self.run.log(data, step=generation)

    def state(self) -> dict[str, Any]:
        return {"project": self.project, "name": self.name}

    def finish(self, summary: dict[str, Any], artifact: Path | None) -> None:
        self.run.log(summary_values(summary), step=max(int(summary.get("generations") or 1) - 1, 0))
        if artifact is not None:
            self.run.log_artifact(artifact, name=f"{self.name}-solution", type="model")
        self.close("finished", "")

    def close(self, status: str, reason: str) -> None:
        import trackio

        with _quiet():
            trackio.finish()  # the module's: it also forgets the run, which its exit hook would finish again


def _runs(project: str) -> list[str]:
    from trackio.sqlite_storage import SQLiteStorage

    try:
        return list(SQLiteStorage.get_runs(project))
    except Exception:  # no store yet
        return []


def _quiet() -> contextlib.redirect_stdout[io.StringIO]:
    return contextlib.redirect_stdout(io.StringIO())
