"""The optional extras gfo_llm needs, checked before the first import of their libraries.

`pip install gfo` brings the generic optimizer only; transformers, PEFT and TRL come with the extras
of pyproject.toml. A command that needs a missing one stops with one line naming the install command
(a `GfoError`: exit code 2) instead of an ImportError's traceback.
"""

from __future__ import annotations

from importlib.util import find_spec

from gfo.errors import GfoError

# The modules each extra installs, by import name (each is also its distribution's name); "grpo"
# includes "llm", as in pyproject.toml, where a test checks that the two lists agree.
MODULES: dict[str, tuple[str, ...]] = {
    "llm": ("transformers", "peft", "accelerate", "gguf"),
    "grpo": ("transformers", "peft", "accelerate", "gguf", "trl", "datasets"),
}


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (found without importing them)."""
    return [module for module in MODULES[extra] if find_spec(module) is None]


def require(extra: str, what: str) -> None:
    """Raise a one-line `GfoError` naming `pip install 'gfo[extra]'` when a module of `extra` is missing.

    `what` names the thing that needs it, e.g. "problem arithmetic" or "gfo sft".
    """
    absent = missing(extra)
    if absent:
        raise GfoError(f"{what} needs {', '.join(absent)} (the {extra} extra): pip install 'gfo[{extra}]'")
