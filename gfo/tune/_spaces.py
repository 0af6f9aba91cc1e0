"""Hyperparameter search spaces: each algorithm's ranges, a `--space` file's changes, and the
ranges resolved against one problem.

Each algorithm declares its space here (`BUILTIN_SPACES`, keyed by its config fields) or as a
`search_space` class attribute (plug-ins); a TOML file narrows, widens or drops parameters. Step
sizes are searched as multiples of the problem's spread (`Problem.initial_stdev`), so one space
fits a test function (spread 2) and a LoRA space (spread 0.02).
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gfo.algorithms import SearchSpec
from gfo.errors import ConfigError
from gfo.problem import Problem
from gfo.registry import ALGORITHMS
from gfo.spec import RunSpec


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
# Rate ratios above 1 can push c_sigma to 2 or c_1 + c_mu above 1 in few dimensions, which CMA-ES
# refuses (`CMAESConfig.check_rates`); the built-in ranges stay where every dimension and population
# work. Widen them with a space file (`gfo tune --space`) for a high-dimensional problem.
_CMA = {
    "popsize": _POPSIZE,
    "stdev_init": _STDEV,
    "c_sigma_ratio": Param(0.25, 1.0),
    "c_mu_ratio": Param(0.25, 1.0),
    "active": Param(choices=(True, False)),
}
_NES = {
    "popsize": _POPSIZE,
    "stdev_init": _STDEV,
    "center_learning_rate": Param(0.1, 2.0),
    "stdev_learning_rate": Param(0.1, 4.0),
}

#: Built-in search spaces: algorithm name -> config field -> range. Defaults sit inside each range.
BUILTIN_SPACES: dict[str, dict[str, Param]] = {
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
    """The algorithm's declared space: its class's `search_space`, else `BUILTIN_SPACES[algorithm]`."""
    declared = getattr(ALGORITHMS.get(algorithm), "search_space", None)
    if declared is not None:
        return dict(declared)
    return dict(BUILTIN_SPACES.get(algorithm, {}))


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
