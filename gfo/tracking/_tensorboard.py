"""TensorBoard: event files in RUN_DIR/tb (through torch's SummaryWriter; needs the tensorboard package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gfo.tracking._base import Tracker, samples_markdown


class TensorBoard(Tracker):
    package = "tensorboard"
    extra = "tensorboard"

    def open(self) -> int | None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = self.info.run_dir / "tb"
        # TensorBoard's own rule for a restarted job: events at or after `purge_step` that an earlier
        # writer left are dropped by every reader. It covers the one case the state file cannot, a
        # kill after an event was written but before the state file said so.
        purge = int(self.saved.get("last", -1)) + 1
        self.writer = SummaryWriter(str(self.dir), purge_step=purge, flush_secs=30)
        if not self.saved:
            self._hparams()
            self.writer.add_text("config", _code(self.info.config_toml, "toml"), 0)
        return None

    def _hparams(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        # The HParams dashboard shows the last value of these scalar tags next to the settings.
        metrics = {"best_so_far": 0.0, **({"heldout/best": 0.0} if self.info.heldout else {})}
        file_writer = self.writer.file_writer
        assert file_writer is not None  # SummaryWriter's constructor opened it
        for summary in hparams(self.info.params, metrics):
            file_writer.add_summary(summary)

    def where(self) -> str:
        root = self.info.group.root if self.info.group else self.info.run_dir
        return f"tensorboard: {self.dir}/ (view: tensorboard --logdir {root})"

    def log(self, generation: int, values: dict[str, float], samples: list[dict[str, Any]]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, generation)
        if samples:
            self.writer.add_text("samples", samples_markdown(generation, samples), generation)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, summary: dict[str, Any], artifact: Path | None) -> None:
        step = max(int(summary.get("generations") or 1) - 1, 0)
        self.writer.add_text("summary", _code(json.dumps(summary, indent=2), "json"), step)
        self.writer.close()

    def close(self, status: str, reason: str) -> None:
        self.writer.close()


def _code(text: str, language: str) -> str:
    return f"```{language}\n{text}\n```"
