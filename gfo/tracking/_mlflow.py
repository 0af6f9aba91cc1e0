"""MLflow: `$MLFLOW_TRACKING_URI` if set, else a SQLite store in RUN_DIR/mlflow (the group's root for
`gfo tune` and `gfo bench`), artifacts beside it. MLflow 3 refuses new file stores; SQLite is its
local default."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from gfo.tracking._base import Tracker, samples_markdown, summary_values

#: What MLflow accepts per parameter value and per `log_batch` call.
_MAX_PARAM = 6000
_BATCH = 100


class MLflow(Tracker):
    package = "mlflow"
    extra = "mlflow"

    def open(self) -> int | None:
        from mlflow.tracking import MlflowClient

        # Creating the tables prints a page of migration INFO lines; keep the console to gfo's own.
        for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
            logging.getLogger(name).setLevel(logging.WARNING)
        root = (self.info.group.root if self.info.group else self.info.run_dir).resolve() / "mlflow"
        env = os.environ.get("MLFLOW_TRACKING_URI")
        self.uri: str = self.saved.get("tracking_uri") or env or f"sqlite:///{root / 'mlflow.db'}"
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        if self.saved.get("run_id"):
            self.run_id: str = self.saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            history = self.client.get_metric_history(self.run_id, "evaluations")
            return max((m.step for m in history), default=-1)
        group = self.info.group
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or (group.name if group else "gfo")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            location = None if env else (root / "artifacts").as_uri()
            experiment_id = self.client.create_experiment(name, artifact_location=location)
        tags = {"gfo.run_dir": str(self.info.run_dir.resolve())}
        if self.info.group:
            tags["gfo.group"] = self.info.group.name
        run = self.client.create_run(experiment_id, run_name=self.info.name, tags=tags)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:_MAX_PARAM]) for k, v in self.info.params.items()]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + _BATCH])
        self.client.log_text(self.run_id, self.info.config_toml, "config.toml")
        return -1

    def where(self) -> str:
        local = self.uri.startswith("sqlite:///")
        view = f" (view: mlflow ui --backend-store-uri {self.uri})" if local else ""
        return f"mlflow: run {self.run_id} in {self.uri}{view}"

    def log(self, generation: int, values: dict[str, float], samples: list[dict[str, Any]]) -> None:
        self._metrics(values, generation)
        if samples:
            text = samples_markdown(generation, samples)
            self.client.log_text(self.run_id, text, f"samples/generation-{generation:06d}.md")

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + _BATCH])

    def state(self) -> dict[str, Any]:
        return {"tracking_uri": self.uri, "run_id": self.run_id}

    def finish(self, summary: dict[str, Any], artifact: Path | None) -> None:
        self._metrics(summary_values(summary), max(int(summary.get("generations") or 1) - 1, 0))
        self.client.log_dict(self.run_id, summary, "summary.json")
        if artifact is not None and artifact.is_dir():
            self.client.log_artifacts(self.run_id, str(artifact), artifact.name)
        elif artifact is not None:
            self.client.log_artifact(self.run_id, str(artifact))
        self.client.set_terminated(self.run_id, "FINISHED")

    def close(self, status: str, reason: str) -> None:
        self.client.set_tag(self.run_id, "gfo.stopped", reason[:_MAX_PARAM])
        self.client.set_terminated(self.run_id, "KILLED" if status == "killed" else "FAILED")
