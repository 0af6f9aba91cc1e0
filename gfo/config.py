"""Frozen-dataclass configs: built from TOML files and `--set section.key=value` overrides.

A resolved run is one `RunSpec`: algorithm name + its config, problem name + its config, and the
run settings. It round-trips through `config.toml`, which `gfo run --config FILE` accepts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gfo.errors import ConfigError
from gfo.registry import TRACKERS, unknown_name

SECTIONS = ("algo", "problem", "run")
#: Searches run in float32: a value above its largest number is inf there, and a spread (sigma)
#: outside STDEV_RANGE has a square, the variance, that overflows to inf or underflows to 0.
FLOAT32_MAX = 3.4028234663852886e38
STDEV_RANGE = (1e-18, 1e18)


def check_spread(name: str, value: float) -> None:
    """Refuse a spread (sigma) that is not > 0 or lies outside STDEV_RANGE (NaN and inf included)."""
    if not value > 0:
        raise ConfigError(f"{name} must be > 0; got {value}")
    if not STDEV_RANGE[0] <= value <= STDEV_RANGE[1]:
        raise ConfigError(
            f"{name} must be in [{STDEV_RANGE[0]:g}, {STDEV_RANGE[1]:g}] (the search runs in float32); "
            f"got {value}"
        )


@dataclass(frozen=True)
class RunConfig:
    """How long to search and where the results go (section `run`)."""

    generations: int = field(default=100, metadata={"help": "generations to run (the total, also on resume)"})
    seed: int = field(default=0, metadata={"help": "seeds the algorithm and the problem's data order"})
    max_evaluations: int | None = field(default=None, metadata={"help": "stop once this many candidates ran"})
    target: float | None = field(default=None, metadata={"help": "stop once best-so-far reaches this value"})
    actors: int = field(default=0, metadata={"help": "Ray actors evaluating the population (0: in process)"})
    ray_address: str | None = field(
        default=None, metadata={"help": "join this Ray cluster ('auto' or host:port)"}
    )
    gpus_per_actor: float = field(default=0.0, metadata={"help": "GPUs reserved per Ray actor"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    select: typing.Literal["heldout", "center"] = field(
        default="heldout",
        metadata={
            "help": "what is exported: heldout (the best held-out score seen, else the best candidate) or "
            "center (the search's final centre)"
        },
    )
    # None rather than (): the config.toml of an untracked run stays as it was before trackers existed.
    track: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "experiment trackers: tensorboard, mlflow, wandb, trackio (docs/tracking.md)"},
    )

    def __post_init__(self) -> None:
        if self.generations < 1:
            raise ConfigError(f"run.generations must be >= 1; got {self.generations}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"run.seed must be in [0, 2**32); got {self.seed}")
        if self.max_evaluations is not None and self.max_evaluations < 1:
            raise ConfigError(f"run.max_evaluations must be >= 1; got {self.max_evaluations}")
        if self.actors < 0:
            raise ConfigError(f"run.actors must be >= 0; got {self.actors}")
        if not 0 <= self.gpus_per_actor < math.inf:
            raise ConfigError(f"run.gpus_per_actor must be a number >= 0; got {self.gpus_per_actor}")
        if self.target is not None and not math.isfinite(self.target):
            raise ConfigError(f"run.target must be a finite number; got {self.target}, or leave it out")
        if self.ray_address is not None and not self.ray_address.strip():
            raise ConfigError(
                "run.ray_address is empty; use auto or host:port, or leave it out for no cluster"
            )
        track = self.track or ()
        for name in track:
            if name not in TRACKERS.names():
                raise ConfigError(unknown_name("tracker", name, TRACKERS.names()) + " in run.track")
        if len(set(track)) != len(track):
            raise ConfigError(f"run.track names a tracker twice ({','.join(track)}); give each once")


def build(cls: type, values: dict[str, Any], section: str) -> Any:
    """Construct dataclass `cls` from `values`, converting strings and naming any bad key or value."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {section}.{close[0]}?" if close else ""
            named = f"{section}.{key}" if key.isprintable() else repr(f"{section}.{key}")
            raise ConfigError(f"unknown key {shown(named, quote=False)}{hint} (known: {', '.join(fields)})")
        kwargs[key] = convert(value, hints[key], f"{section}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {section} settings: {exc}") from exc


#: Integers beyond int64 fit no tensor, seed or C library: refused for every integer setting.
INT_RANGE = (-(2**63), 2**63)


def convert(value: Any, hint: Any, name: str) -> Any:
    """Convert a TOML value or a `--set` string to the annotated type. Never lets a value through that
    its type cannot hold: integers beyond int64, NaN and infinite floats are refused here."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(value, arg, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is typing.Literal:  # a choice field: mypy checks the code's values, this the user's
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{name} must be one of {', '.join(map(str, args))}; got {shown(value)}{hint}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            items = [s.strip() for s in value.split(",") if s.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            example = '["a", "b"] (a,b with --set)'
            raise ConfigError(f"{name} must be a list, e.g. {example}; got {shown(value)}")
        return tuple(convert(v, args[0], name) for v in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{name} must be true or false; got {shown(value)}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name} must be an integer; got {shown(value)}")
        try:
            integer = int(value)
        except (TypeError, ValueError):  # ValueError also for strings of more than 4300 digits
            raise ConfigError(f"{name} must be an integer; got {shown(value)}") from None
        if not INT_RANGE[0] <= integer < INT_RANGE[1]:
            raise ConfigError(f"{name} must be an integer in [-2**63, 2**63); got {shown(value)}")
        return integer
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number; got {shown(value)}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a TOML integer beyond 1.8e308
            raise ConfigError(f"{name} must be a number; got {shown(value)}") from None
        if number != number:
            raise ConfigError(f"{name} must be a number; got NaN")
        if not math.isfinite(number):  # "1e400" parses as inf: no setting takes an infinite value
            raise ConfigError(f"{name} must be finite; got {shown(value, quote=False)}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string; got {shown(value)}")
        return value
    return value


def shown(value: Any, limit: int = 60, *, quote: bool = True) -> str:
    """`repr(value)` (`str` without `quote`), cut to `limit` characters: an error line names the value
    without becoming a page."""
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else f"{text[: limit - 10]}...{text[-7:]} ({len(text)} characters)"


def parse_set(items: list[str]) -> dict[str, dict[str, str]]:
    """`["algo.stdev_init=0.3", ...]` -> `{"algo": {"stdev_init": "0.3"}}`."""
    out: dict[str, dict[str, str]] = {s: {} for s in SECTIONS}
    for item in items:
        key, eq, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot or not name:
            raise ConfigError(f"--set expects section.key=value; got {item!r}, e.g. --set problem.dim=50")
        if section not in SECTIONS:
            raise ConfigError(
                f"--set section must be one of {', '.join(SECTIONS)}; got {section!r} in {item!r}"
            )
        out[section][name] = value.strip()
    return out


def read_toml(path: Path) -> dict[str, Any]:
    shown_path = str(path) if str(path).isprintable() else repr(str(path))  # the error stays one line
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {shown_path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {shown_path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {shown_path} is not valid TOML: {exc}") from None
    unknown = set(data) - {*SECTIONS, "algorithm", "problem_name"}
    if unknown:
        names = ", ".join(k if k.isprintable() else repr(k) for k in sorted(unknown))
        raise ConfigError(
            f"config file {shown_path} has unknown top-level key(s) {shown(names, quote=False)}; "
            f"use the sections [algo], [problem], [run] and the key algorithm = ..."
        )
    for section in SECTIONS:
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"config file {shown_path}: {section} must be a table, e.g. [{section}]")
    for key, example in (("algorithm", "pgpe"), ("problem_name", "sphere")):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(
                f'config file {shown_path}: {key} must be a name in quotes, e.g. {key} = "{example}"; '
                f"got {shown(data[key])}"
            )
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as TOML-ready values (None dropped, tuples as lists)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def plain_values(config: Any) -> dict[str, Any]:
    """Every field of a dataclass config, None included, tuples as lists (what a checkpoint can hold)."""
    return {
        f.name: list(value) if isinstance(value := getattr(config, f.name), tuple) else value
        for f in dataclasses.fields(config)
    }


def describe_fields(cls: type) -> list[tuple[str, str, str]]:
    """(name, default, help) of each field, for `gfo list` and the docs."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        rows.append((f.name, shown, f.metadata.get("help", "")))
    return rows
