"""Learning recipes: a task, a warm start, a search and how the result is proved, as a TOML file.

The recipes gfo ships live in `gfo_llm/recipes/NAME.toml` (`gfo learn --recipe NAME`); a user's own
file works the same way (`gfo learn --recipe my.toml`). A file holds the fields of `Recipe`; its
`[problem]` table is `--set problem.KEY=VALUE` of every step (the evaluations, the SFT, the search:
what defines the items), its `[search]` table the settings of the search alone (`KEY` means
`problem.KEY`; `algo.KEY` and `run.KEY` as in `gfo run --set`).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from gfo.errors import ConfigError, GfoError
from gfo.registry import unknown_name

Fresh = Literal["seed", "offset"]


@dataclass(frozen=True)
class Recipe:
    """A learning recipe: the start, the search, and the fresh items that prove it."""

    task: str = field(metadata={"help": "the problem (an LLM task: `gfo list`)"})
    description: str = field(default="", metadata={"help": "one line for `gfo learn --help` and listings"})
    algo: str = field(default="pgpe", metadata={"help": "the search's algorithm"})
    popsize: int = field(default=16, metadata={"help": "candidates a generation"})
    generations: int = field(default=20, metadata={"help": "generations of the search"})
    problem: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "problem settings of every step (what defines the items)"}
    )
    search: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "settings of the search only: KEY, algo.KEY, run.KEY"}
    )
    sft: bool = field(
        default=True, metadata={"help": "warm start by `gfo sft` (false: the PiSSA start, the base model)"}
    )
    sft_limit: int | None = field(default=1024, metadata={"help": "SFT on the first N training items"})
    sft_lr: float = field(default=1e-3, metadata={"help": "SFT learning rate"})
    sft_epochs: float = field(default=1.0, metadata={"help": "SFT passes over its items"})
    items: int = field(default=500, metadata={"help": "fresh items scored"})
    fresh: Fresh = field(
        default="seed",
        metadata={
            "help": "seed: the test stream of another data_seed (generated tasks); offset: the test "
            "split past the search's selection items (problem.eval_limit)"
        },
    )

    def __post_init__(self) -> None:
        if self.fresh not in ("seed", "offset"):
            raise ConfigError(f"recipe fresh must be seed or offset; got {self.fresh!r}")
        for name in ("popsize", "generations", "items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"recipe {name} must be >= 1; got {getattr(self, name)}")
        if self.sft_limit is not None and self.sft_limit < 1:
            raise ConfigError(f"recipe sft_limit must be >= 1; got {self.sft_limit}, or leave it out (all)")


def recipe_names() -> list[str]:
    """The recipes gfo ships, by name."""
    folder = resources.files("gfo_llm") / "recipes"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_recipe(name: str) -> Recipe:
    """A shipped recipe by name, or a recipe file by path (anything ending in .toml)."""
    if name.endswith(".toml"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise GfoError(
                f"recipe file {name!r} does not exist; pass a .toml file or a recipe name: "
                f"{', '.join(recipe_names())}"
            )
        text, where = path.read_text(), str(path)
    else:
        names = recipe_names()
        if name not in names:
            raise GfoError(unknown_name("recipe", name, names))
        text, where = (resources.files("gfo_llm") / "recipes" / f"{name}.toml").read_text(), name
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GfoError(f"recipe {where} is not valid TOML: {exc}") from None
    known = {f.name for f in dataclasses.fields(Recipe)}
    extra = sorted(set(data) - known)
    if extra:
        raise GfoError(
            f"recipe {where}: unknown key(s) {', '.join(extra)}; the keys are {', '.join(sorted(known))}"
        )
    if "task" not in data:
        raise GfoError(f'recipe {where} names no task; add e.g. task = "arithmetic"')
    try:
        return Recipe(**data)
    except TypeError as exc:
        raise GfoError(f"recipe {where}: {exc}") from None
