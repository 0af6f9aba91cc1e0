"""The commands other packages add to `gfo`: the `gfo.commands` entry point group.

gfo_llm's `eval` and `sft` arrive this way, so that `gfo/` names none of them; a third party's
command uses the same door (docs/tasks.md).
"""

from __future__ import annotations

import sys

import typer

from gfo.errors import GfoError
from gfo.registry import COMMANDS


def add_plugin_commands(app: typer.Typer) -> None:
    """Add the commands of the `gfo.commands` entry points to a Typer app, once.

    An entry point names a function, which becomes the command of the entry point's name, or a Typer
    app, which becomes a command group of that name. A name that is taken is refused; a plug-in that
    cannot be imported is skipped with a warning, so that it does not take the other commands with it.
    """
    if app in _added:
        return
    _added.append(app)

    for name in COMMANDS.names():
        if name in command_names(app):
            raise GfoError(
                f"{COMMANDS.origin(name)} registers command {name!r} (a gfo.commands entry point), which gfo "
                "already has; rename it or uninstall that package"
            )
        try:
            target = COMMANDS.get(name)
        except GfoError as exc:
            print(f"warning: {exc}; `gfo {name}` is unavailable", file=sys.stderr)
            continue
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name)
        elif callable(target):
            app.command(name)(target)
        else:
            raise GfoError(
                f"the gfo.commands entry point {name!r} names a {type(target).__name__}; "
                "it must name a function or a typer.Typer"
            )


_added: list[typer.Typer] = []  # the apps already given their plug-ins


def command_names(app: typer.Typer) -> set[str]:
    """The names `app` answers to, as Typer derives them (`list_` is registered as "list")."""
    from typer.main import get_command_name

    names = {c.name or get_command_name(getattr(c.callback, "__name__", "")) for c in app.registered_commands}
    return names | {g.name for g in app.registered_groups if isinstance(g.name, str)}
