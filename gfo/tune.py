"""Hyperparameter search with Optuna: every trial is a real `gfo.loop.run` in `OUT/trial-NNNN/`.

Each algorithm declares its search space here (`SPACES`, keyed by its config fields) or as a
`search_space` class attribute (plug-ins); a TOML file narrows, widens or drops parameters. Step
sizes are searched as multiples of the problem's spread (`Problem.initial_stdev`), so one space
fits a test function (spread 2) and a LoRA space (spread 0.02). Trial 0 runs the algorithm's
defaults, so the study itself says what tuning gained. A pruner (median by default) stops trials
that trail the others at the same generation.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import traceback
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from gfo import config as cfg
from gfo.algorithms import SearchSpec
from gfo.errors import ConfigError, GfoError
from gfo.loop import Callback, Interrupted, prepare_run_dir, run
from gfo.problem import Problem, Sense, better
from gfo.registry import ALGORITHMS, PROBLEMS
from gfo.spec import RunSpec

#: Trials that must fail in a row before `tune` gives up (a broken setup, not an unlucky sample).
MAX_CONSECUTIVE_FAILURES = 3


@dataclass(frozen=True)
class Param:
    """The searched range of one algorithm config field.

    The kind (int, float, bool) comes from the field's type. `relative` ranges and defaults are
    multiples of the problem's spread. `default` is needed only where the config default is None
    and means something computed (e.g. PGPE's `max_speed` = spread / 10); `popsize` is read from
    the algorithm itself.
    """

    low: float | None = None
    high: float | None = None
    log: bool = True
    relative: bool = False
    step: int | None = None
    choices: tuple[Any, ...] | None = None
    default: float | None = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            if not self.choices:
                raise ConfigError("a search-space choices list is empty; give at least one value")
            return
        if self.low is None or self.high is None:
            raise ConfigError("a search-space parameter needs low and high (or choices)")
        if not self.low < self.high:
            raise ConfigError(f"search-space low must be < high; got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ConfigError(f"a log-scaled range needs low > 0; got low={self.low}, use log = false")
        if self.step is not None and (self.step < 1 or self.log):
            raise ConfigError(
                f"step must be >= 1 and needs log = false; got step={self.step}, log={self.log}"
            )


_STDEV = Param(0.05, 2.0, relative=True, default=1.0)
_POPSIZE = Param(4, 128)
_POPSIZE_EVEN = Param(8, 128, log=False, step=2)  # antithetic pairs
_CMA = {
    "popsize": _POPSIZE,
    "stdev_init": _STDEV,
    "c_sigma_ratio": Param(0.25, 4.0),
    "c_mu_ratio": Param(0.25, 4.0),
    "active": Param(choices=(True, False)),
}
_NES = {
    "popsize": _POPSIZE,
    "stdev_init": _STDEV,
    "center_learning_rate": Param(0.1, 2.0),
    "stdev_learning_rate": Param(0.1, 4.0),
}

#: Built-in search spaces: algorithm name -> config field -> range. Defaults sit inside each range.
SPACES: dict[str, dict[str, Param]] = {
    "es": {
        "popsize": _POPSIZE_EVEN,
        "stdev_init": Param(0.0025, 0.25, relative=True, default=1 / 40),
        "center_learning_rate": Param(0.0025, 0.25, relative=True, default=1 / 40),
    },
    "pgpe": {
        "popsize": _POPSIZE_EVEN,
        "stdev_init": _STDEV,
        "center_learning_rate": Param(0.005, 0.5, relative=True, default=0.05),
        "max_speed": Param(0.01, 1.0, relative=True, default=0.1),
        "momentum": Param(0.5, 0.99, log=False),
        "stdev_learning_rate": Param(0.02, 0.5),
    },
    "snes": _NES,
    "xnes": _NES,
    "cem": {
        "popsize": Param(8, 256),
        "stdev_init": _STDEV,
        "parenthood_ratio": Param(0.25, 0.5, log=False),  # popsize 8 x 0.25 = the 2 elites cem needs
        "stdev_max_change": Param(0.02, 0.5),
    },
    "cmaes": _CMA,
    "sep-cmaes": _CMA,
}

_SPACE_KEYS = {f.name for f in dataclasses.fields(Param)}


@dataclass(frozen=True)
class Dimension:
    """A parameter resolved against one problem: absolute bounds, its kind and trial 0's value."""

    name: str
    kind: str  # "int", "float" or "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()
    default: Any = None

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=self.step or 1, log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return bool(self.low <= value <= self.high)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {list(self.choices)}"
        scale = ", log" if self.log else ""
        step = f", step {self.step}" if self.step else ""
        return f"{self.name} in [{self.low:.4g}, {self.high:.4g}{scale}{step}]"


def builtin_space(algorithm: str) -> dict[str, Param]:
    """The algorithm's declared space: its class's `search_space`, else `SPACES[algorithm]`."""
    declared = getattr(ALGORITHMS.get(algorithm), "search_space", None)
    if declared is not None:
        return dict(declared)
    return dict(SPACES.get(algorithm, {}))


def read_space_file(path: Path) -> dict[str, Any]:
    """A `--space` TOML file: `[field]` tables of Param keys, or `field = false` to leave a field out."""
    import tomllib

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"search-space file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"search-space file {path} cannot be read: {exc}") from None


def merge_space(base: dict[str, Param], changes: Mapping[str, Any], config_cls: type) -> dict[str, Param]:
    """Apply a space file: given keys replace the built-in ones, `false` drops a field, new fields join."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    space = dict(base)
    for name, change in changes.items():
        if name not in fields:
            raise ConfigError(
                f"search space names {name!r}, which is not a setting of this algorithm "
                f"(settings: {', '.join(sorted(fields))})"
            )
        if change is False:
            space.pop(name, None)
            continue
        if not isinstance(change, dict):
            raise ConfigError(
                f"search space entry {name} must be a table like [{name}] low = .. high = .., "
                f"or {name} = false to leave it out; got {change!r}"
            )
        unknown = set(change) - _SPACE_KEYS
        if unknown:
            raise ConfigError(
                f"search space [{name}] has unknown key(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(_SPACE_KEYS))})"
            )
        values = dict(change)
        if name not in space and "choices" not in values and not {"low", "high"} <= set(values):
            raise ConfigError(
                f"search space [{name}] adds a setting the algorithm does not search by default; "
                "give both low and high (or choices)"
            )
        if "choices" in values:
            values["choices"] = tuple(values["choices"])
            values.setdefault("low", None)
            values.setdefault("high", None)
        try:
            space[name] = dataclasses.replace(space.get(name, Param(1.0, 2.0)), **values)
        except ConfigError as exc:
            raise ConfigError(f"search space [{name}]: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"search space [{name}]: {exc}") from None
    return space


def resolve_space(spec: RunSpec, space: Mapping[str, Param], problem: Problem) -> list[Dimension]:
    """Absolute ranges for this problem, minus the fields `spec` sets away from their defaults.

    A setting given with `--set algo.X=...` or in `--config` is held fixed: that is how a user
    pins one hyperparameter while the others are searched.
    """
    config_cls = type(spec.algo)
    defaults = config_cls()
    hints = typing.get_type_hints(config_cls)
    spread = problem.initial_stdev
    popsize = _default_popsize(spec, problem)
    dims = []
    for name, param in space.items():
        value = getattr(spec.algo, name)
        if value != getattr(defaults, name):
            continue  # pinned by the user
        kind = _kind(hints[name], name)
        scale = spread if param.relative else 1.0
        if value is None:
            if name == "popsize":
                value = popsize
            elif param.default is not None:
                value = param.default * scale
            else:
                raise ConfigError(
                    f"search space {spec.algorithm}.{name}: the config default is None (computed by the "
                    f"algorithm); give `default = ...` in its [{name}] table"
                )
        if param.choices is not None:
            dims.append(Dimension(name, "choice", choices=param.choices, default=value))
            continue
        if kind == "choice":
            raise ConfigError(f"search space [{name}]: a true/false setting needs choices = [true, false]")
        assert param.low is not None and param.high is not None
        low, high = param.low * scale, param.high * scale
        if kind == "int":
            if low != int(low) or high != int(high):
                raise ConfigError(f"search space [{name}]: {name} is an integer; low and high must be too")
            value = int(value)
        dims.append(Dimension(name, kind, low, high, param.log, param.step, default=value))
    _check_bounds(spec, dims)
    return dims


def _kind(hint: Any, name: str) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    if base is bool:
        return "choice"
    if base is int:
        return "int"
    if base is float:
        return "float"
    raise ConfigError(f"algo.{name} ({hint}) cannot be searched: only int, float and bool settings can")


def _default_popsize(spec: RunSpec, problem: Problem) -> int:
    """The population the algorithm picks by itself for this problem (its rules live in one place)."""
    search = SearchSpec(
        problem.sense,
        problem.solution_length,
        torch.zeros(problem.solution_length),
        problem.initial_stdev,
        problem.default_popsize,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EvoTorch's construction chatter; the trials will show it
        return int(ALGORITHMS.get(spec.algorithm)(spec.algo, search, spec.run.seed).popsize)


def _check_bounds(spec: RunSpec, dims: list[Dimension]) -> None:
    """Fail now, not in trial 7: both ends of every range must be a valid config."""
    for dim in dims:
        ends = dim.choices if dim.kind == "choice" else (dim.low, dim.high)
        for end in ends:
            value = int(end) if dim.kind == "int" else end
            try:
                dataclasses.replace(spec.algo, **{dim.name: value})
            except ConfigError as exc:
                raise ConfigError(f"search space {dim.describe()} reaches an invalid value: {exc}") from None


# ---------------------------------------------------------------- the study


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
    del problem  # every trial builds its own; an LLM problem holds a whole model
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GfoError(
            f"cannot open study storage {url!r}: {first}; "
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


def write_trials_csv(rows: list[TrialRow], param_names: list[str], path: Path) -> None:
    names = list(dict.fromkeys([*param_names, *(k for r in rows for k in r.params)]))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "trial",
                "state",
                "value",
                "defaults",
                "last_generation",
                "duration_s",
                *names,
                "run_dir",
                "error",
            ]
        )
        for r in rows:
            writer.writerow(
                [
                    r.number,
                    r.state,
                    "" if r.value is None else repr(r.value),
                    r.defaults,
                    "" if r.last_generation is None else r.last_generation,
                    "" if r.duration_s is None else f"{r.duration_s:.2f}",
                    *(r.params.get(n, "") for n in names),
                    r.run_dir,
                    r.error,
                ]
            )


def ranked(rows: list[TrialRow], sense: Sense) -> list[TrialRow]:
    """Completed trials best first, then pruned (latest generation first), then the rest."""

    def key(r: TrialRow) -> tuple[int, float]:
        if r.state == "COMPLETE" and r.value is not None:
            return (0, r.value if sense == "min" else -r.value)
        if r.state == "PRUNED":
            return (1, -(r.last_generation or 0))
        return (2, r.number)

    return sorted(rows, key=key)


def print_result(result: TuneResult, console: Any) -> None:
    """The trials table (best first) and the defaults-versus-best line."""
    from rich.table import Table

    table = Table(title=f"study {result.study}: {result.finished} finished trials, best first")
    table.add_column("trial", justify="right")
    table.add_column("state")
    table.add_column("value", justify="right")
    table.add_column("hyperparameters")
    shown = ranked(result.rows, result.sense)
    for r in shown[:20]:
        label = f"{r.number}{'*' if r.defaults else ''}"
        value = f"{r.value:.6g}" if r.value is not None else "-"
        state = r.state.lower() + (f" at gen {r.last_generation}" if r.state == "PRUNED" else "")
        params = "  ".join(f"{k}={_param_text(v)}" for k, v in r.params.items())
        table.add_row(label, state, value, params)
    table.caption = "* the algorithm's defaults"
    console.print(table)
    if len(shown) > 20:
        console.print(f"({len(shown) - 20} more in {result.trials_csv})")
    best = result.best
    if result.defaults is not None and result.defaults.value is not None:
        console.print(
            f"defaults (trial {result.defaults.number}): {result.defaults.value:.6g}   "
            f"best (trial {best.number}): {best.value:.6g}   "
            f"({'lower' if result.sense == 'min' else 'higher'} is better)"
        )
    else:
        console.print(f"best (trial {best.number}): {best.value:.6g}; the defaults trial did not complete")
    for line in (
        f"ran {result.ran} new trial(s); storage {result.storage}",
        f"best config: {result.best_toml}  (gfo run --config {result.best_toml})",
        f"all trials: {result.trials_csv}",
    ):
        console.print(line, soft_wrap=True, markup=False)


def _param_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
