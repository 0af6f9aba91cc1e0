"""A resolved run: which algorithm and problem, their configs, and the run settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from gfo import config as cfg
from gfo.errors import ConfigError
from gfo.registry import ALGORITHMS, PROBLEMS


@dataclass(frozen=True)
class RunSpec:
    algorithm: str
    algo: Any
    problem_name: str
    problem: Any
    run: cfg.RunConfig

    def to_toml(self) -> str:
        return tomli_w.dumps(
            {
                "algorithm": self.algorithm,
                "problem_name": self.problem_name,
                "algo": cfg.to_dict(self.algo),
                "problem": cfg.to_dict(self.problem),
                "run": cfg.to_dict(self.run),
            }
        )


def resolve(
    algorithm: str | None,
    problem: str | None,
    *,
    config_file: Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunSpec:
    """Merge, lowest precedence first: `base` (a run's saved config), the config file, the names given,
    then `--set` overrides. Every value is validated by its section's dataclass."""
    data: dict[str, Any] = {"algo": {}, "problem": {}, "run": {}}
    for source in (base, cfg.read_toml(config_file) if config_file else None):
        if source:
            data["algorithm"] = source.get("algorithm", data.get("algorithm"))
            data["problem_name"] = source.get("problem_name", data.get("problem_name"))
            for section in cfg.SECTIONS:
                data[section].update(source.get(section, {}))
    algorithm = algorithm or data.get("algorithm")
    problem = problem or data.get("problem_name")
    if not algorithm:
        raise ConfigError("no algorithm given; use --algo NAME (see `gfo list`)")
    if not problem:
        raise ConfigError("no problem given; use --problem NAME (see `gfo list`)")
    if data.get("algorithm") and data["algorithm"] != algorithm:
        data["algo"] = {}  # hyperparameters of another algorithm do not carry over
    for section, values in cfg.parse_set(overrides or []).items():
        data[section].update(values)
    algo_cls = ALGORITHMS.get(algorithm)
    problem_cls = PROBLEMS.get(problem)
    return RunSpec(
        algorithm=algorithm,
        algo=cfg.build(algo_cls.Config, data["algo"], "algo"),
        problem_name=problem,
        problem=cfg.build(problem_cls.Config, data["problem"], "problem"),
        run=cfg.build(cfg.RunConfig, data["run"], "run"),
    )
