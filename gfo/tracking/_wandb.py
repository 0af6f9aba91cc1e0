"""Weights & Biases: files in RUN_DIR/wandb; offline (upload later with `wandb sync`) unless logged in
(`WANDB_API_KEY` or a netrc entry) or `WANDB_MODE` says otherwise. Project `$WANDB_PROJECT` or gfo."""

from __future__ import annotations

import netrc
import os
import uuid
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from gfo.tracking._base import Tracker, sample_rows


class WandB(Tracker):
    package = "wandb"
    extra = "wandb"

    def open(self) -> int | None:
        import wandb

        mode: Literal["online", "offline"] | None = None  # None: W&B reads WANDB_MODE itself
        if not os.environ.get("WANDB_MODE"):
            mode = "online" if _logged_in() else "offline"
        resuming = bool(self.saved.get("id"))
        self.run = wandb.init(
            project=self.saved.get("project") or os.environ.get("WANDB_PROJECT") or "gfo",
            name=self.info.name,
            group=self.info.group.name if self.info.group else None,
            id=self.saved.get("id") or uuid.uuid4().hex[:8],
            resume="allow",
            dir=str(self.info.run_dir),
            config=None if resuming else dict(self.info.params),
            mode=mode,
            reinit="create_new",
            # console="off": W&B would otherwise wrap stdout and stderr, under the progress bar.
            settings=wandb.Settings(console="off", silent=True),
        )
        if resuming:
            # A resume may extend run.generations: settings are updated, not refused.
            self.run.config.update(dict(self.info.params), allow_val_change=True)
            if not self.run.offline and self.run.resumed:
                return int(self.run.starting_step) - 1
        return None

    def where(self) -> str:
        if self.run.offline:
            upload = f"wandb sync {self.info.run_dir / 'wandb'}"
            return f"wandb: offline run {self.run.id} in {Path(self.run.dir).parent} (upload: {upload})"
        return f"wandb: {self.run.url}"

    def log(self, generation: int, values: dict[str, float], samples: list[dict[str, Any]]) -> None:
        import wandb

        data: dict[str, Any] = dict(values)
        if samples:
            columns, rows = sample_rows(samples)
            data["samples"] = wandb.Table(columns=list[Any](columns), data=rows)
        self.run.log(data, step=generation)

    def state(self) -> dict[str, Any]:
        return {"id": self.run.id, "project": self.run.project}

    def finish(self, summary: dict[str, Any], artifact: Path | None) -> None:
        import wandb

        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, str | int | float)})
        if artifact is not None:
            solution = wandb.Artifact(f"solution-{self.run.id}", type="model")
            if artifact.is_dir():
                solution.add_dir(str(artifact), name=artifact.name)
            else:
                solution.add_file(str(artifact))
            self.run.log_artifact(solution)
        self.run.finish()

    def close(self, status: str, reason: str) -> None:
        self.run.summary["stopped"] = reason
        self.run.finish(exit_code=130 if status == "killed" else 1)


def _logged_in() -> bool:
    """An API key in the environment or in the netrc file W&B's login writes (no network)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False
