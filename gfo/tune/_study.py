"""The Optuna study: settings, trials (each a real `gfo.loop.run` in `OUT/trial-NNNN/`), failures.

Trial 0 runs the algorithm's defaults, so the study itself says what tuning gained. A pruner
(median by default, `Pruning`) stops trials that trail the others at the same generation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gfo import config as cfg
from gfo.errors import ConfigError, GfoError, first_line
from gfo.loop import Callback, Interrupted, prepare_run_dir, run
from gfo.problem import Problem, Sense, better
from gfo.registry import PROBLEMS
from gfo.spec import RunSpec
from gfo.tune._pruning import Pruning
from gfo.tune._report import write_trials_csv
from gfo.tune._spaces import (
    Dimension,
    _default_popsize,
    builtin_space,
    merge_space,
    read_space_file,
    resolve_space,
)

#: Trials that must fail in a row before `tune` gives up (a broken setup, not an unlucky sample).
MAX_CONSECUTIVE_FAILURES = 3


@dataclass(frozen=True)
class TuneSettings:
    """How the study runs (the run itself is the `RunSpec`)."""

    trials: int = field(metadata={"help": "finished trials (complete or pruned) the study should hold"})
    out: Path = field(metadata={"help": "trial-NNNN/ run folders, study.db, best.toml, trials.csv"})
    storage: str | None = field(
        default=None, metadata={"help": "Optuna storage URL; default sqlite:///OUT/study.db"}
    )
    study: str | None = field(default=None, metadata={"help": "study name; default <problem>-<algorithm>"})
    space_file: Path | None = field(
        default=None, metadata={"help": "TOML file narrowing or widening the space"}
    )
    pruner: str = field(default="median", metadata={"help": "median or none"})
    sampler_seed: int | None = field(default=None, metadata={"help": "seed of the TPE sampler"})

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be >= 1; got {self.trials}, e.g. --trials 20")
        if self.pruner not in ("median", "none"):
            raise ConfigError(f"--pruner must be median or none; got {self.pruner!r}")

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.out.resolve() / 'study.db'}"


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    value: float | None
    defaults: bool
    params: dict[str, Any]
    last_generation: int | None
    duration_s: float | None
    run_dir: str
    error: str
    counters: dict[str, float] = field(default_factory=dict)  # the problem's totals, completed trials


@dataclass(frozen=True)
class TuneResult:
    study: str
    storage: str
    sense: Sense
    finished: int
    ran: int
    best: TrialRow
    defaults: TrialRow | None
    rows: list[TrialRow]
    best_toml: Path
    trials_csv: Path
    space: list[Dimension]


def tune(
    spec: RunSpec,
    settings: TuneSettings,
    *,
    log: Callable[[str], None] = print,
    callbacks: Callable[[RunSpec, Path], list[Callback]] | None = None,
) -> TuneResult:
    """Run trials until the study holds `settings.trials` finished ones; write best.toml and trials.csv.

    Semantics of `trials`: the total for the study, not for this call. A rerun (or a second process
    on the same storage) runs only what is missing; failed trials do not count and are replaced.
    `callbacks(spec, run_dir)` adds loop callbacks to each trial (experiment tracking).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # gfo reports trials itself, one line each
    problem: Problem = PROBLEMS.get(spec.problem_name)(spec.problem)
    changes = read_space_file(settings.space_file) if settings.space_file else {}
    space = merge_space(builtin_space(spec.algorithm), changes, type(spec.algo))
    settings.out.mkdir(parents=True, exist_ok=True)
    study = _open_study(spec, settings, problem)  # a bad storage URL fails before any work
    dims = resolve_space(spec, space, problem)
    sense = problem.sense
    problem.close()  # every trial builds its own (and its run closes it)
    del problem
    if not dims:
        raise ConfigError(
            f"nothing to search for {spec.algorithm}: every setting of its space is fixed by --config/--set "
            "or left out by --space; drop a pinned algo setting or add a [field] table to the space file"
        )
    identity = _identity(spec, dims)
    _check_identity(study, identity, settings)
    default_params = {d.name: d.default for d in dims}
    for d in dims:
        if not d.contains(d.default):
            log(f"note: the default {d.name} = {d.default:.4g} lies outside {d.describe()}; trial 0 runs it")
    _enqueue_defaults(study, default_params)

    objective = _Objective(spec, dims, settings.out, sense, callbacks)
    ran = failures = 0
    while _fail_stale(study) or _counted(study) < settings.trials:
        try:
            study.optimize(objective, n_trials=1)
        except Interrupted:
            raise
        except Exception as exc:
            failures += 1
            log(f"trial {objective.number} failed: {type(exc).__name__}: {exc}")
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise GfoError(
                    f"{failures} trials in a row failed, the last with {type(exc).__name__}: {exc}; "
                    f"see {settings.out}/trial-*/ and fix the setup before rerunning"
                ) from exc
            continue
        failures = 0
        ran += 1
        done = next(t for t in study.get_trials(deepcopy=False) if t.number == objective.number)
        log(_trial_line(done, study, settings.trials))

    rows = [_row(t, settings.out) for t in study.get_trials(deepcopy=False)]
    completed = [r for r in rows if r.state == "COMPLETE" and r.value is not None]
    if not completed:
        raise GfoError(f"study {study.study_name} has no completed trial; see trials.csv in {settings.out}")
    best = _best(completed, sense)
    defaults = next((r for r in completed if r.defaults), None)
    best_spec = dataclasses.replace(spec, algo=dataclasses.replace(spec.algo, **best.params))
    best_toml = settings.out / "best.toml"
    best_toml.write_text(best_spec.to_toml())
    trials_csv = settings.out / "trials.csv"
    write_trials_csv(rows, [d.name for d in dims], trials_csv)
    return TuneResult(
        study=study.study_name,
        storage=settings.storage_url(),
        sense=sense,
        finished=_counted(study, running=False),
        ran=ran,
        best=best,
        defaults=defaults,
        rows=rows,
        best_toml=best_toml,
        trials_csv=trials_csv,
        space=dims,
    )


def _generations(spec: RunSpec, problem: Problem) -> int:
    """Generations a run will last: `run.generations`, or fewer under `run.max_evaluations`."""
    if spec.run.max_evaluations is None:
        return spec.run.generations
    return min(spec.run.generations, math.ceil(spec.run.max_evaluations / _default_popsize(spec, problem)))


def _open_study(spec: RunSpec, settings: TuneSettings, problem: Problem) -> Any:
    import optuna

    url = settings.storage_url()
    try:
        # Heartbeats let a live worker mark the trials of a killed one as failed (and so replaced).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
    except Exception as exc:
        raise GfoError(
            f"cannot open study storage {url!r}: {first_line(exc)}; "
            "use an Optuna database URL such as sqlite:///path/study.db or postgresql://host/db"
        ) from None
    warmup = max(1, _generations(spec, problem) // 5)  # early best-so-far says little
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
        if settings.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    name = settings.study or f"{spec.problem_name}-{spec.algorithm}"
    direction: Literal["minimize", "maximize"] = "minimize" if problem.sense == "min" else "maximize"
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=direction,
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=settings.sampler_seed),
            pruner=pruner,
        )
    except Exception as exc:
        raise GfoError(f"cannot create or load study {name!r} in {url!r}: {exc}") from None
    if study.direction.name.lower() != direction:
        raise GfoError(
            f"study {name!r} in {url} was created to {study.direction.name.lower()}, but "
            f"{spec.problem_name} needs {direction}; use another --study"
        )
    return study


def _identity(spec: RunSpec, dims: list[Dimension]) -> dict[str, Any]:
    """What every trial of one study must share: the problem, the budget, the fixed settings."""
    searched = {d.name for d in dims}
    return {
        "algorithm": spec.algorithm,
        "problem_name": spec.problem_name,
        "problem": cfg.to_dict(spec.problem),
        "run": {k: v for k, v in cfg.to_dict(spec.run).items() if k != "track"},  # observing is no setting
        "fixed_algo": {k: v for k, v in cfg.to_dict(spec.algo).items() if k not in searched},
    }


def _check_identity(study: Any, identity: dict[str, Any], settings: TuneSettings) -> None:
    saved = study.user_attrs.get("gfo")
    if saved is None:
        study.set_user_attr("gfo", identity)
        return
    diffs = []
    for key in identity:
        if isinstance(identity[key], dict):
            for sub in sorted(set(identity[key]) | set(saved.get(key, {}))):
                if identity[key].get(sub) != saved.get(key, {}).get(sub):
                    diffs.append(
                        f"{key}.{sub}: study {saved.get(key, {}).get(sub)!r}, now {identity[key].get(sub)!r}"
                    )
        elif identity[key] != saved.get(key):
            diffs.append(f"{key}: study {saved.get(key)!r}, now {identity[key]!r}")
    if diffs:
        raise GfoError(
            f"study {study.study_name!r} was run with other settings ({'; '.join(diffs[:3])}); "
            "rerun with the same --config/--set, or pass another --study or --out"
        )


def _enqueue_defaults(study: Any, params: dict[str, Any]) -> None:
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    if any(t.user_attrs.get("defaults") for t in study.get_trials(deepcopy=False, states=live)):
        return
    study.enqueue_trial(params, user_attrs={"defaults": True})


def _fail_stale(study: Any) -> bool:
    """Mark trials of workers that stopped sending heartbeats as failed (they are replaced); False."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return False


def _counted(study: Any, *, running: bool = True) -> int:
    """Finished trials, plus those other workers are running (so together they stop at N)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED) + ((TrialState.RUNNING,) if running else ())
    return len(study.get_trials(deepcopy=False, states=states))


class _Objective:
    """One trial: sample, run in `OUT/trial-NNNN/`, return the held-out (else final) best."""

    def __init__(
        self,
        spec: RunSpec,
        dims: list[Dimension],
        out: Path,
        sense: Sense,
        callbacks: Callable[[RunSpec, Path], list[Callback]] | None = None,
    ) -> None:
        self.spec, self.dims, self.out, self.sense = spec, dims, out, sense
        self.callbacks = callbacks
        self.number = -1  # the trial running or last run in this process

    def __call__(self, trial: Any) -> float:
        import optuna

        self.number = trial.number
        params = {d.name: d.suggest(trial) for d in self.dims}
        run_dir = self.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        is_defaults = bool(trial.user_attrs.get("defaults"))
        try:
            spec = dataclasses.replace(self.spec, algo=dataclasses.replace(self.spec.algo, **params))
            prepare_run_dir(run_dir, resume=False, force=True)
            extra = self.callbacks(spec, run_dir) if self.callbacks else []
            pruning = Pruning(trial, self.sense, prune=not is_defaults)
            summary = run(spec, run_dir, callbacks=[*extra, pruning])  # trackers see the pruned generation
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", "".join(traceback.format_exception_only(exc)).strip())
            raise
        trial.set_user_attr("evaluations", summary["evaluations"])
        trial.set_user_attr("wall_s", summary["wall_s"])
        trial.set_user_attr("counters", summary.get("counters") or {})
        heldout = summary.get("heldout_best")
        return float(heldout if heldout is not None else summary["best"])


def _row(trial: Any, out: Path) -> TrialRow:
    duration = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else None
    )
    return TrialRow(
        number=trial.number,
        state=trial.state.name,
        value=trial.value if trial.state.name == "COMPLETE" else None,
        defaults=bool(trial.user_attrs.get("defaults")),
        params=dict(trial.params),
        last_generation=trial.user_attrs.get("last_generation"),
        duration_s=duration,
        run_dir=trial.user_attrs.get("run_dir", str(out / f"trial-{trial.number:04d}")),
        error=trial.user_attrs.get("error", ""),
        counters=dict(trial.user_attrs.get("counters") or {}),
    )


def _best(rows: list[TrialRow], sense: Sense) -> TrialRow:
    best = rows[0]
    for row in rows[1:]:
        assert row.value is not None and best.value is not None
        if better(row.value, best.value, sense):
            best = row
    return best


def _trial_line(trial: Any, study: Any, total: int) -> str:
    state = trial.state.name.lower()
    tag = " (defaults)" if trial.user_attrs.get("defaults") else ""
    if state == "complete":
        text = f"trial {trial.number}{tag}: {trial.value:.6g}"
    elif state == "pruned":
        text = f"trial {trial.number}{tag}: pruned at generation {trial.user_attrs.get('last_generation')}"
    else:
        text = f"trial {trial.number}{tag}: {state}"
    with contextlib.suppress(ValueError):  # no completed trial yet
        text += f"; best so far {study.best_value:.6g} (trial {study.best_trial.number})"
    return text + f"; {_counted(study, running=False)}/{total} finished"
