"""The generated reference pages: every `gfo` command's options and every settings key.

docs/reference/cli.md comes from the Typer app (gfo/cli.py and the `gfo.commands` entry points),
docs/reference/config.md from the dataclass field metadata that `gfo list` reads
(`gfo.config.describe_fields`) and from `gfo learn`'s `Recipe` and shipped recipes.
`python tests/test_reference_docs.py` rewrites both; `test_the_reference_pages_are_current` fails
when a committed page differs from what this file generates now. The pages hold nothing of the
machine: no paths, no terminal width.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"cli": ROOT / "docs" / "reference" / "cli.md", "config": ROOT / "docs" / "reference" / "config.md"}
REGENERATE = "python tests/test_reference_docs.py"
#: Only what gfo itself ships is documented, so that a third party's installed plug-in does not
#: change the page (modules of these packages; the name `Registry.origin` gives gfo's own entries).
OWN_MODULES = ("gfo.", "gfo_llm.", "problems.")
OWN_DISTRIBUTION = "gfo"
TYPES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "bool": "BOOLEAN"}


def _cell(text: object) -> str:
    """One markdown table cell: one line; pipes and angle brackets escaped (`<problem>` is not HTML)."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "\\<").replace(">", "\\>")


def _header(source: str) -> str:
    return f"<!-- generated from {source} by `{REGENERATE}`: edit those, then rerun it -->"


# ---------------------------------------------------------------- commands


def _option_type(param: Any, ctx: Any) -> str:
    """TEXT, INTEGER, PATH, ... from the metavar click shows in `--help` (`--out <path>`)."""
    record = param.get_help_record(ctx)
    match = re.search(r"<(.+)>\s*$", record[0]) if record else None
    if match is None:
        return ""
    name = match.group(1)
    inner = re.fullmatch(r"list\[(.+)\]", name)
    if inner is not None:
        name = inner.group(1)
    return TYPES.get(name.lower(), name.upper())


def _param_row(param: Any, ctx: Any) -> str:
    if param.param_type_name == "argument":
        name = param.name.upper() + ("..." if param.nargs == -1 or param.multiple else "")
        what = f"`{name}` (argument)"
    else:
        opts = sorted(param.opts, key=lambda o: (o.startswith("--"), o))  # -a before --algo, as --help
        what = "`" + ", ".join(opts) + "`"
        if param.secondary_opts:
            what += " / `" + ", ".join(param.secondary_opts) + "`"
    if getattr(param, "is_flag", False):  # a default of None: neither, the command decides
        kind, default = "flag", {True: "on", False: "off"}.get(param.default, "")
    else:
        kind = _option_type(param, ctx)
        if param.multiple or param.nargs == -1:
            kind += ", repeatable"
        default = "" if param.default is None else f"`{param.default}`"
    if param.required:
        default = "required"
    return f"| {what} | {kind} | {default} | {_cell(getattr(param, 'help', None) or '')} |"


def _commands(group: Any, path: str) -> Iterable[tuple[str, Any]]:
    """(command path, click command) for every command of the app, sub-groups included, in help order."""
    for name, command in group.commands.items():
        callback = getattr(command, "callback", None)
        module = getattr(callback, "__module__", "") or ""
        if hasattr(command, "commands"):  # a Typer sub-app registered as a group
            yield from _commands(command, f"{path} {name}")
        elif module.startswith(OWN_MODULES):
            yield f"{path} {name}", command


def render_cli() -> str:
    import typer.main
    from typer._click import Context

    from gfo.cli import add_plugin_commands, app

    add_plugin_commands()
    group = typer.main.get_command(app)
    commands = list(_commands(group, "gfo"))
    lines = [
        "# Command reference",
        "",
        _header("the Typer app, gfo/cli.py and the `gfo.commands` entry points"),
        "",
        _cell(group.help or ""),
        "Every command takes `--help`; errors in what you typed are one line on stderr and exit code 2.",
        "How the settings options (`--config`, `--set`) combine, what a run writes and how it exits:",
        "[runs.md](runs.md); every settings key: [config.md](config.md).",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for path, command in commands:
        anchor = path.replace(" ", "-")
        summary = (command.help or "").strip().split("\n")[0]
        lines.append(f"| [`{path}`](#{anchor}) | {_cell(summary)} |")
    for path, command in commands:
        ctx = Context(command, info_name=path)
        usage = " ".join(command.collect_usage_pieces(ctx))
        module = command.callback.__module__
        lines += ["", f"## {path}", ""]
        lines += [_cell(p) for p in (command.help or "").strip().split("\n\n")]
        lines += ["", f"Usage: `{path} {usage}`. Defined in `{module}`."]
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        if params:
            lines += ["", "| option | type | default | help |", "|---|---|---|---|"]
            lines += [_param_row(p, ctx) for p in params]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- settings


def _fields_table(section: str, rows: list[tuple[str, str, str]]) -> list[str]:
    out = ["| key | default | help |", "|---|---|---|"]
    for name, default, help_ in rows:
        shown = f"`{default}`" if default not in ("", "None") else ("none" if default == "None" else "")
        out.append(f"| `{section}.{name}` | {shown} | {_cell(help_)} |")
    return out


def _grouped(registry: Any) -> list[tuple[list[str], Any]]:
    """(names, class) of gfo's own entries; names of one class are documented once."""
    groups: dict[Any, list[str]] = {}
    for name in registry.names():
        if registry.origin(name) != OWN_DISTRIBUTION:
            continue
        groups.setdefault(registry.get(name), []).append(name)
    return [(names, cls) for cls, names in groups.items()]


def _about(cls: Any) -> str:
    return getattr(cls, "summary", "") or (cls.__doc__ or "").strip().split("\n")[0]


def render_config() -> str:
    from gfo.config import RunConfig, describe_fields
    from gfo.registry import ALGORITHMS, PROBLEMS
    from gfo_llm.config import LLMConfig

    lines = [
        "# Settings reference",
        "",
        _header("the settings dataclasses' field metadata, what `gfo list` prints"),
        "",
        "A run has three sections of settings: `run`, `algo` (the chosen algorithm's) and `problem` (the",
        "chosen problem's). Set a key with `--set section.key=value` (repeatable), in a TOML file's",
        "`[section]` (`--config FILE`), or, for some, a shortcut option (`--generations`, `--popsize`,",
        "`--seed`, ...); [runs.md](runs.md#settings) says which wins. Tuple values take commas",
        "(`--set problem.target_modules=q_proj,v_proj`); `none` unsets an optional value. Every value is",
        "checked when the settings are built, and a bad one is a one-line error naming the key.",
        "",
        "## run",
        "",
        _cell(_about(RunConfig)),
        "",
        *_fields_table("run", describe_fields(RunConfig)),
        "",
        "## algo",
        "",
        "The keys of the algorithm chosen with `--algo`.",
    ]
    for names, cls in _grouped(ALGORITHMS):
        title = ", ".join(f"`{n}`" for n in names)
        lines += ["", f"### {title}", "", f"{_cell(_about(cls))} (`{cls.Config.__name__}`)", ""]
        lines += _fields_table("algo", describe_fields(cls.Config))

    shared = describe_fields(LLMConfig)
    problems = _grouped(PROBLEMS)
    llm = [(n, c) for n, c in problems if issubclass(c.Config, LLMConfig)]
    other = [(n, c) for n, c in problems if not issubclass(c.Config, LLMConfig)]
    llm_names = ", ".join(f"`{n}`" for names, _ in llm for n in names)
    lines += [
        "",
        "## problem: LLM tasks",
        "",
        f"Every LLM task ({llm_names}) has these keys (`{LLMConfig.__name__}`): {_about(LLMConfig)}",
        "",
        *_fields_table("problem", shared),
    ]
    for names, cls in llm:
        own = [row for row in describe_fields(cls.Config) if row not in shared]
        title = ", ".join(f"`{n}`" for n in names)
        lines += ["", f"### {title}", "", f"{_cell(_about(cls))} (`{cls.Config.__name__}`)", ""]
        if own:
            lines += [
                "The keys above, and these (a key listed here again has another default or help):",
                "",
                *_fields_table("problem", own),
            ]
        else:
            lines.append("The keys above, no others.")
    lines += ["", "## problem: test functions"]
    for names, cls in other:
        title = ", ".join(f"`{n}`" for n in names)
        lines += ["", f"### {title}", "", f"{_cell(_about(cls))} (`{cls.Config.__name__}`)", ""]
        lines += _fields_table("problem", describe_fields(cls.Config))
    return "\n".join(lines + _recipes()) + "\n"


def _toml_default(value: Any) -> str:
    """A recipe default as a TOML file writes it: `true`, `16`; none for None, nothing for empty."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`" if value not in ("", {}) else ""


def _recipes() -> list[str]:
    """The keys of a `gfo learn` recipe file and the recipes gfo ships."""
    from gfo_llm.recipe import Recipe, load_recipe, recipe_names

    lines = [
        "",
        "## gfo learn recipes",
        "",
        "`gfo learn --recipe NAME` runs a shipped recipe, `--recipe FILE.toml` a file of your own with these",
        "keys ([../learn.md](../learn.md)). `[problem]` holds `problem.*` settings of every step,",
        "`[search]` settings of the search alone (`KEY` is `problem.KEY`; `algo.KEY` and `run.KEY` as in",
        "`gfo run --set`).",
        "",
        "| key | default | help |",
        "|---|---|---|",
    ]
    for f in dataclasses.fields(Recipe):
        if f.default is not dataclasses.MISSING:
            shown = _toml_default(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            shown = _toml_default(f.default_factory())
        else:
            shown = "required"
        lines.append(f"| `{f.name}` | {shown} | {_cell(f.metadata.get('help', ''))} |")
    lines += ["", "The recipes gfo ships (`gfo_llm/recipes/`):", "", "| recipe | what it runs |", "|---|---|"]
    lines += [f"| `{name}` | {_cell(load_recipe(name).description)} |" for name in recipe_names()]
    return lines


RENDER = {"cli": render_cli, "config": render_config}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_reference_pages_are_current(page: str) -> None:
    path = PAGES[page]
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: run `{REGENERATE}`"
    assert path.read_text() == RENDER[page](), (
        f"{path.relative_to(ROOT)} is stale (a command's options or a setting's default or help changed): "
        f"run `{REGENERATE}` and commit the page"
    )


def test_every_setting_has_help() -> None:
    """A key without help would be an empty cell in docs/reference/config.md and in `gfo list`."""
    from gfo.config import RunConfig
    from gfo.registry import ALGORITHMS, PROBLEMS

    configs = [RunConfig] + [cls.Config for _, cls in _grouped(ALGORITHMS) + _grouped(PROBLEMS)]
    missing = [
        f"{c.__name__}.{f.name}" for c in configs for f in dataclasses.fields(c) if not f.metadata.get("help")
    ]
    assert not missing, f"settings without field(metadata={{'help': ...}}): {missing}"


if __name__ == "__main__":
    for page, path in PAGES.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(RENDER[page]())
        print(f"wrote {path.relative_to(ROOT)}")
