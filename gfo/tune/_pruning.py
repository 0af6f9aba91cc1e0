"""`Pruning`: the loop callback through which Optuna's pruner sees, and stops, a running trial."""

from __future__ import annotations

import math
from typing import Any

from gfo.loop import Callback
from gfo.problem import Problem, Sense, better
from gfo.spec import RunSpec


class Pruning(Callback):
    """Reports the run's score every generation and stops a trial the pruner gives up on.

    The score is the best held-out value so far when the problem evaluates held-out data (on the
    generations it does), else the best-so-far fitness: the same quantity the trial returns.
    """

    def __init__(self, trial: Any, sense: Sense, *, prune: bool = True) -> None:
        self.trial = trial
        self.sense = sense
        self.prune = prune
        self._uses_heldout = False
        self._heldout = math.nan

    def on_start(self, spec: RunSpec, problem: Problem, algorithm: Any, start_generation: int) -> None:
        self._uses_heldout = problem.heldout_every() > 0

    def on_generation(self, record: dict[str, Any]) -> None:
        import optuna

        if self._uses_heldout:
            if "heldout_initial" in record:  # the start: the same in every trial, part of heldout_best
                self._heldout = record["heldout_initial"]
            if "heldout" not in record:
                return  # between held-out evaluations nothing new is known
            for score in record["heldout"].values():
                if math.isnan(self._heldout) or better(score, self._heldout, self.sense):
                    self._heldout = score
            value = self._heldout
        else:
            value = record["best_so_far"]
        step = int(record["generation"])
        self.trial.report(float(value), step)
        self.trial.set_user_attr("last_generation", step)
        if self.prune and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at generation {step} with {value:.6g}")
