"""Name -> class registries with lazy built-ins and third-party entry points.

Targets are "module:attr" strings, imported only when a name is used, so that listing names (and
`gfo --help`) imports neither torch nor transformers. What lives in gfo itself (algorithms,
trackers) is registered here; everything else arrives through the `gfo.<kind>s` entry point groups,
problems included: gfo's own test functions and tasks are declared in its pyproject.toml exactly as
a third party declares its own, so this package names no package above it.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from importlib.metadata import entry_points
from typing import Any

from gfo.errors import GfoError


class Registry:
    def __init__(self, kind: str, builtins: dict[str, str]) -> None:
        self.kind = kind
        self._targets: dict[str, str | Any] = dict(builtins)
        self._origin = dict.fromkeys(builtins, "gfo")  # name -> the package that registered it
        self._plugins_loaded = False

    def register(self, name: str, target: str | Any) -> None:
        """Add `name`; a target is a class or a lazy "module:attr" string. Duplicates are refused."""
        self._load_plugins()
        if name in self._targets:
            raise GfoError(f"{self.kind} {name!r} is already registered; pick another name")
        self._targets[name] = target
        self._origin[name] = "a register() call"

    def origin(self, name: str) -> str:
        """Who registered `name`: "gfo", a distribution's name (an entry point), or a register() call."""
        self._load_plugins()
        return self._origin[name]

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._targets)

    def name_of(self, target: Any) -> str | None:
        """The name `target` (a class) is registered under, or None; imports nothing: a lazy target
        counts only if its module is imported already (as an instance's class's module is)."""
        self._load_plugins()
        for name, registered in self._targets.items():
            if isinstance(registered, str):
                module, _, attr = registered.partition(":")
                registered = getattr(sys.modules[module], attr, None) if module in sys.modules else None
            if registered is target:
                return name
        return None

    def get(self, name: str) -> Any:
        self._load_plugins()
        if name not in self._targets:
            if not self._targets:  # not even gfo's own entry points: stale package metadata
                raise GfoError(
                    f"unknown {self.kind} {name!r}: no {self.kind}s are registered at all (entry point "
                    f"group gfo.{self.kind}s is empty); reinstall gfo, e.g. pip install --no-deps -e ."
                )
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
            package = ep.dist.name if ep.dist is not None else "an unnamed package"
            if ep.name in self._targets:
                raise GfoError(
                    f"entry point {ep.value} of {package} registers {self.kind} {ep.name!r}, which "
                    f"{self._origin[ep.name]} already registers; rename one of them or uninstall one"
                )
            self._targets[ep.name] = ep.value
            self._origin[ep.name] = package


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

#: Every problem is a plug-in (`gfo.problems` entry points), the built-in ones included.
PROBLEMS = Registry("problem", {})

#: Commands that plug-ins add to `gfo` (`gfo.commands` entry points), the LLM adapter's `eval` and
#: `sft` included: a function becomes the command of the entry point's name, a Typer app a group.
COMMANDS = Registry("command", {})

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
