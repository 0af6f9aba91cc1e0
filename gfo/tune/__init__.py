"""Hyperparameter search with Optuna: every trial is a real `gfo.loop.run` in `OUT/trial-NNNN/`.

`_spaces.py` holds each algorithm's search space and resolves it against a problem, `_study.py`
runs the study (trial 0 the defaults, failures replaced, several workers on one storage),
`_pruning.py` is the loop callback Optuna's pruner acts through, and `_report.py` writes
`trials.csv` and prints the trials table. `gfo.tune` re-exports their public names.
"""

from __future__ import annotations

from gfo.tune._pruning import Pruning
from gfo.tune._report import print_result, ranked, write_trials_csv
from gfo.tune._spaces import (
    BUILTIN_SPACES,
    Dimension,
    Param,
    builtin_space,
    merge_space,
    read_space_file,
    resolve_space,
)
from gfo.tune._study import MAX_CONSECUTIVE_FAILURES, TrialRow, TuneResult, TuneSettings, tune

__all__ = [
    "BUILTIN_SPACES",
    "MAX_CONSECUTIVE_FAILURES",
    "Dimension",
    "Param",
    "Pruning",
    "TrialRow",
    "TuneResult",
    "TuneSettings",
    "builtin_space",
    "merge_space",
    "print_result",
    "ranked",
    "read_space_file",
    "resolve_space",
    "tune",
    "write_trials_csv",
]
