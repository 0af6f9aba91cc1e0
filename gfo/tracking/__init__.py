"""Experiment trackers (TensorBoard, MLflow, W&B, Trackio) as one run-loop callback.

`Tracking` follows a run directory: every numeric metric of each generation, the settings as
hyperparameters, the problem's samples as text, and at the end the summary and the
exported solution as an artifact. A resumed run continues the same tracked run. Each tracker is an
optional extra (`pip install 'gfo[tensorboard]'`), imported only when used. See docs/tracking.md.
"""

from __future__ import annotations

from gfo.tracking._base import Group, RunInfo, Tracker, require, scalars, settings
from gfo.tracking._callback import STATE_FILE, Tracking, callbacks

__all__ = [
    "STATE_FILE",
    "Group",
    "RunInfo",
    "Tracker",
    "Tracking",
    "callbacks",
    "require",
    "scalars",
    "settings",
]
