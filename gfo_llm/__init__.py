"""gfo_llm: gfo's LLM adapter. `gfo_llm.search(task, model=...)` aligns a model's LoRA to a task or a
reward function in one call; the names load on first use (`import gfo_llm` imports no torch)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gfo_llm._api import reward_task, search

__all__ = ["reward_task", "search"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("gfo_llm._api"), name)
    raise AttributeError(f"module 'gfo_llm' has no attribute {name!r}")
