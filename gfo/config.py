"""Frozen-dataclass configs: built from TOML files and `--set section.key=value` overrides.

A resolved run is one `RunSpec`: algorithm name + its config, problem name + its config, and the
run settings. It round-trips through `config.toml`, which `gfo run --config FILE` accepts.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gfo.errors import ConfigError
from gfo.registry import TRACKERS, unknown_name

SECTIONS = ("algo", "problem", "run")


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
        if self.gpus_per_actor < 0:
            raise ConfigError(f"run.gpus_per_actor must be >= 0; got {self.gpus_per_actor}")
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
            raise ConfigError(f"unknown key {section}.{key}{hint} (known: {', '.join(fields)})")
        kwargs[key] = convert(value, hints[key], f"{section}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {section} settings: {exc}") from exc


def convert(value: Any, hint: Any, name: str) -> Any:
    """Convert a TOML value or a `--set` string to the annotated type."""
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
    if origin is tuple:
        items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else list(value)
        return tuple(convert(v, args[0], name) for v in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{name} must be true or false; got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name} must be an integer; got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer; got {value!r}") from None
    if hint is float:
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number; got {value!r}") from None
        if result != result:
            raise ConfigError(f"{name} must be a number; got NaN")
        return result
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string; got {value!r}")
        return value
    return value


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
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {*SECTIONS, "algorithm", "problem_name"}
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown top-level key(s) {', '.join(sorted(unknown))}; "
            f"use the sections [algo], [problem], [run] and the key algorithm = ..."
        )
    for section in SECTIONS:
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"config file {path}: {section} must be a table, e.g. [{section}]")
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
