"""Name -> class registries with lazy built-ins and third-party entry points.

Built-ins are registered as "module:attr" strings so that listing names (and `gfo --help`) imports
neither torch nor transformers; plug-ins arrive through the `gfo.<kind>` entry point groups.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from gfo.errors import GfoError


class Registry:
    def __init__(self, kind: str, builtins: dict[str, str]) -> None:
        self.kind = kind
        self._targets: dict[str, str | Any] = dict(builtins)
        self._plugins_loaded = False

    def register(self, name: str, target: str | Any) -> None:
        """Add `name`; a target is a class or a lazy "module:attr" string. Duplicates are refused."""
        self._load_plugins()
        if name in self._targets:
            raise GfoError(f"{self.kind} {name!r} is already registered; pick another name")
        self._targets[name] = target

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._targets)

    def get(self, name: str) -> Any:
        self._load_plugins()
        if name not in self._targets:
            raise GfoError(unknown_name(self.kind, name, self.names()))
        target = self._targets[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            try:
                target = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise GfoError(
                    f"{self.kind} {name!r} could not be loaded from {self._targets[name]}: {exc}"
                ) from exc
            self._targets[name] = target
        return target

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=f"gfo.{self.kind}s"):
            if ep.name in self._targets:
                raise GfoError(
                    f"entry point {ep.value} registers {self.kind} {ep.name!r}, which already exists"
                )
            self._targets[ep.name] = ep.value


def unknown_name(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (known: {', '.join(known)})"


ALGORITHMS = Registry(
    "algorithm",
    {
        "es": "gfo.algorithms:ES",
        "pgpe": "gfo.algorithms:PGPE",
        "snes": "gfo.algorithms:SNES",
        "xnes": "gfo.algorithms:XNES",
        "cmaes": "gfo.algorithms:CMAES",
        "sep-cmaes": "gfo.algorithms:SepCMAES",
        "cem": "gfo.algorithms:CEM",
    },
)

PROBLEMS = Registry(
    "problem",
    {
        "sphere": "problems.benchmarks:Sphere",
        "rastrigin": "problems.benchmarks:Rastrigin",
        "rosenbrock": "problems.benchmarks:Rosenbrock",
        "ellipsoid": "problems.benchmarks:Ellipsoid",
        "bbob": "problems.bbob:BBOB",
        "gsm8k": "problems.gsm8k:Problem",
        "arithmetic": "problems.arithmetic:Problem",
        "countdown": "problems.countdown:Problem",
        "instruct": "problems.instruct:Problem",
    },
)

#: Experiment trackers for `run.track` (`gfo.tracking`); each imports its package only when used.
TRACKERS = Registry(
    "tracker",
    {
        "tensorboard": "gfo.tracking._tensorboard:TensorBoard",
        "mlflow": "gfo.tracking._mlflow:MLflow",
        "wandb": "gfo.tracking._wandb:WandB",
        "trackio": "gfo.tracking._trackio:Trackio",
    },
)
