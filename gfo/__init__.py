"""gfo: gradient-free optimization, from test functions to the LoRA space of a language model.

`gfo.search(problem, algo, ...)` runs a search from Python (what `gfo run` runs from the shell);
`gfo.Problem` is what a problem implements. LLM tasks: `gfo_llm.search`. The names load on first
use, so that `import gfo.cli` (the `gfo` command) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gfo._api import Summary, search
    from gfo.problem import Context, Evaluation, Problem

__all__ = ["Context", "Evaluation", "Problem", "Summary", "search"]
_HOMES = {"Summary": "gfo._api", "search": "gfo._api", "Context": "gfo.problem", "Evaluation": "gfo.problem"}
_HOMES["Problem"] = "gfo.problem"


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'gfo' has no attribute {name!r}")
