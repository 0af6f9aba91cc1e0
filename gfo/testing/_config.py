"""What every plug-in's `Config` must do: be a frozen dataclass that survives config.toml and pickling."""

from __future__ import annotations

import dataclasses
import pickle
import tomllib
from typing import Any

import tomli_w

from gfo import config as cfg


def assert_config_conforms(config_cls: type, config: Any, section: str) -> None:
    """`config` is a `config_cls`, a frozen dataclass, and comes back equal from config.toml (what a
    resume rebuilds, `section` being "algo" or "problem") and from pickle (what Ray actors receive)."""
    assert dataclasses.is_dataclass(config_cls), f"{config_cls.__qualname__} is not a dataclass"
    assert config_cls.__dataclass_params__.frozen, (  # type: ignore[attr-defined]
        f"{config_cls.__qualname__} is not frozen: use @dataclass(frozen=True)"
    )
    assert isinstance(config, config_cls), f"the config is a {type(config).__name__}, not a {config_cls}"
    text = tomli_w.dumps(cfg.to_dict(config))
    assert cfg.build(config_cls, tomllib.loads(text), section) == config, f"config.toml changes it:\n{text}"
    assert pickle.loads(pickle.dumps(config)) == config


def subject(suite: Any, attr: str, fixture: str) -> tuple[Any, Any]:
    """The class a conformance suite tests (its `attr`, e.g. `problem_cls`) and its config (`config`,
    else the class's default `Config()`); a suite that sets neither is told how, by its `fixture`."""
    cls = getattr(suite, attr, None)
    if cls is None:
        name = suite.__name__ if isinstance(suite, type) else type(suite).__name__
        raise TypeError(
            f"{name}: set `{attr} = ...` (and `config = ....Config(...)`) or override the `{fixture}` fixture"
        )
    return cls, cls.Config() if suite.config is None else suite.config
