"""The layers stay true: gfo/ knows neither gfo_llm nor problems, gfo_llm knows no problem.

Three kinds of check: every module's imports read with `ast` (lazy ones inside functions and
importlib targets such as "problems.x:Y" included); a plug-in package built here, with a real
`.dist-info`, that adds a problem and commands to the real `gfo` executable; and gfo's own
bench, tune and progress display showing counters whose names gfo was never told.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from rich.console import Console

from gfo.problem import Context, Evaluation
from gfo.registry import PROBLEMS
from problems.functions import Sphere

ROOT = Path(__file__).resolve().parents[1]
#: package -> the packages it must not import
FORBIDDEN = {"gfo": {"gfo_llm", "problems"}, "gfo_llm": {"problems"}, "problems": set()}
#: a string that names a module (importlib.import_module, a registry's "module:attr" target)
TARGET = re.compile(r"([A-Za-z_]\w*)(?:\.[A-Za-z_]\w*)*(?::[A-Za-z_][\w.]*)?")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Top-level packages a module imports anywhere (module level, inside functions, in strings)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from .x import y` in package p is p.x
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(base[0] if base else "")
            else:
                found.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.strip()
            match = TARGET.fullmatch(text)
            if match and ("." in text or ":" in text):
                found.add(match.group(1))
    return found


def code_mentions(source: str) -> list[str]:
    """Mentions of gfo_llm or of a problems module in code: names and strings, not documentation
    (docstrings, bare string statements and comments, which describe and do not depend)."""
    tree = ast.parse(source)
    prose = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    texts: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            texts.append(node.value)
        elif isinstance(node, ast.Name):
            texts.append(node.id)
        elif isinstance(node, ast.Attribute):
            texts.append(node.attr)
        elif isinstance(node, ast.alias):
            texts += [node.name, node.asname or ""]
    pattern = re.compile(r"\bgfo_llm\b|\bproblems[.:][A-Za-z_]")
    return [t for t in texts if pattern.search(t)]


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_the_checks_see_every_kind_of_import() -> None:
    """The checkers on literal code, so that a clean result below is not a blind one."""
    source = textwrap.dedent(
        """
        '''Mentions gfo_llm and problems.gsm8k in prose only.'''
        import os.path
        from gfo import config

        def lazy():
            import gfo_llm.model
            from problems import gsm8k

        TARGETS = {"a": "problems.functions:Sphere", "b": "gfo_llm.evaluate"}
        importlib.import_module("torch.nn")
        """
    )
    assert imported(source, "gfo.x") == {"os", "gfo", "gfo_llm", "problems", "torch"}
    assert imported("from . import a\nfrom ..b import c\n", "gfo_llm.sub.m") == {"gfo_llm"}
    assert imported("from . import a\n", "gfo", is_package=True) == {"gfo"}
    assert imported("x = ('problems', 'min', 'see `gfo list`', 'e.g. 1.5')\n", "gfo.x") == set()
    assert sorted(code_mentions(source)) == sorted(
        ["gfo_llm.model", "problems.functions:Sphere", "gfo_llm.evaluate"]
    )
    assert code_mentions("x = 1  # see gfo_llm.model and problems.bbob\n") == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down(package: str) -> None:
    files = sources(package)
    assert len(files) >= 8, f"only {len(files)} modules under {package}/: wrong folder?"
    wrong = []
    for path in files:
        name = module_name(path)
        found = imported(path.read_text(), name, is_package=path.name == "__init__.py")
        wrong += [f"{name} imports {top}" for top in sorted(found & FORBIDDEN[package])]
    assert not wrong, "\n".join(wrong)


def test_gfo_names_no_package_above_it() -> None:
    """What `grep -E 'gfo_llm|problems\\.[a-z]' gfo/` would say, minus documentation."""
    wrong = [f"{module_name(p)}: {text!r}" for p in sources("gfo") for text in code_mentions(p.read_text())]
    assert not wrong, "\n".join(wrong)


# A plug-in: a problem (torch, imported only when used) and commands (typer only), with real package
# metadata, put on PYTHONPATH of the real executable. Nothing in gfo is edited or told about it.

PLUGIN_PROBLEM = '''
"""f(x) = sum (x_i - 1)^2, counting the widgets it uses."""
from __future__ import annotations
from dataclasses import dataclass, field
import torch
from gfo.problem import Context, Evaluation, Problem


@dataclass(frozen=True)
class ShiftedConfig:
    dim: int = field(default=3, metadata={"help": "number of variables"})


class Shifted(Problem):
    """The shifted sphere of the toy plug-in."""

    sense = "min"
    Config = ShiftedConfig

    def __init__(self, config: ShiftedConfig) -> None:
        super().__init__(config)
        self.solution_length = config.dim

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        fitness = ((population.double() - 1.0) ** 2).sum(dim=1)
        return Evaluation(fitness=fitness, counters={"blue_widgets": 2.0 * len(population)})
'''

PLUGIN_COMMANDS = '''
"""Commands of the toy plug-in."""
from __future__ import annotations
from typing import Annotated
import typer
from gfo.errors import GfoError


def hello(name: Annotated[str, typer.Option(help="whom to greet")] = "world") -> None:
    """Greet from a plug-in."""
    if not name:
        raise GfoError("--name is empty; give one, e.g. --name ada")
    print(f"hello, {name}")


tools = typer.Typer(help="A command group from a plug-in.")


@tools.command()
def ping() -> None:
    """Answer pong."""
    print("pong")
'''


def plugin(site: Path, dist: str, entry_points: str) -> Path:
    """A distribution `dist` on the path `site`: the `gfo_toy` package and `<dist>.dist-info`."""
    package = site / "gfo_toy"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "problem.py").write_text(PLUGIN_PROBLEM)
    (package / "commands.py").write_text(PLUGIN_COMMANDS)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points).lstrip())
    return site


def gfo(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `gfo` executable (the console script) with `site` on its PYTHONPATH."""
    script = Path(sys.executable).with_name("gfo")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gfo.cli"]
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}  # rich tables: one row a line
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=300, env=env, cwd=site
    )  # fmt: skip


TOY = """
    [gfo.problems]
    toy-shifted = gfo_toy.problem:Shifted

    [gfo.commands]
    hello = gfo_toy.commands:hello
    tools = gfo_toy.commands:tools
"""


def test_a_plugin_adds_a_problem_and_commands(tmp_path: Path) -> None:
    site = plugin(tmp_path / "site", "gfo-toy", TOY)
    listed = gfo(site, "list")
    assert listed.returncode == 0, listed.stderr
    assert "toy-shifted" in listed.stdout and "shifted sphere of the toy plug-in" in listed.stdout
    assert "sphere" in listed.stdout  # gfo's own problems are still there

    out = tmp_path / "run"
    ran = gfo(
        site, "run", "--problem", "toy-shifted", "--algo", "pgpe", "--generations", "2", "--out", str(out)
    )
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generations"] == 2
    assert summary["counters"] == {"blue_widgets": 2.0 * summary["evaluations"]}
    # the progress lines (stderr is no terminal) show the counter nobody told gfo about
    lines = [line for line in ran.stderr.splitlines() if line.startswith("generation ")]
    assert len(lines) == 2 and all(re.search(r"\d blue widgets/s", line) for line in lines), ran.stderr

    helped = gfo(site, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "Greet from a plug-in" in helped.stdout and "command group from a plug-in" in helped.stdout
    assert "eval" in helped.stdout and "sft" in helped.stdout  # and gfo_llm's, the same way
    hello = gfo(site, "hello", "--name", "ada")
    assert (hello.returncode, hello.stdout, hello.stderr) == (0, "hello, ada\n", "")
    assert gfo(site, "tools", "ping").stdout == "pong\n"
    # a plug-in command's GfoError is one line and exit code 2, like any gfo command's
    bad = gfo(site, "hello", "--name", "")
    assert (bad.returncode, bad.stderr) == (2, "error: --name is empty; give one, e.g. --name ada\n")


def test_a_plugin_cannot_take_a_name_that_is_taken(tmp_path: Path) -> None:
    problem = plugin(tmp_path / "a", "gfo-toy", "[gfo.problems]\nsphere = gfo_toy.problem:Shifted\n")
    listed = gfo(problem, "list")
    assert listed.returncode == 2 and listed.stderr.count("\n") == 1, listed.stderr
    assert "problem 'sphere'" in listed.stderr and "gfo-toy" in listed.stderr and "already" in listed.stderr

    command = plugin(tmp_path / "b", "gfo-toy", "[gfo.commands]\nrun = gfo_toy.commands:hello\n")
    helped = gfo(command, "--help")
    assert helped.returncode == 2 and helped.stderr.count("\n") == 1, helped.stderr
    assert "gfo-toy registers command 'run'" in helped.stderr and "gfo already has" in helped.stderr


def test_a_broken_plugin_command_leaves_the_others_working(tmp_path: Path) -> None:
    entry = "[gfo.commands]\nbroken = gfo_toy.missing:nothing\nhello = gfo_toy.commands:hello\n"
    site = plugin(tmp_path / "site", "gfo-toy", entry)
    hello = gfo(site, "hello")
    assert hello.returncode == 0 and hello.stdout == "hello, world\n", hello.stderr
    assert hello.stderr.startswith("warning: command 'broken' could not be loaded from gfo_toy.missing")
    assert "`gfo broken` is unavailable" in hello.stderr and hello.stderr.count("\n") == 1


# Counters: gfo shows whatever additive counters a problem's evaluations carry, by their names.


class Counting(Sphere):
    """A sphere that counts blue widgets, a counter gfo has never heard of."""

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        result = super().evaluate(population, context)
        result.counters = {"blue_widgets": 2.0 * len(population)}
        return result


@pytest.fixture
def counting() -> str:
    if "test-counting" not in PROBLEMS.names():  # registered here, not at import: other suites list problems
        PROBLEMS.register("test-counting", Counting)
    return "test-counting"


def test_bench_tables_every_counter_by_name(counting: str, tmp_path: Path) -> None:
    from gfo import bench

    runs = bench.plan(["pgpe"], counting, seeds=3, out=tmp_path, overrides=["problem.dim=3"], generations=3)
    bench.run_all(runs, log=lambda _: None)
    result = bench.report(runs, tmp_path)
    with (tmp_path / "results.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    header = list(reader.fieldnames or [])
    assert header[header.index("wall_s") + 1 : header.index("stop_reason")] == ["blue_widgets"]
    totals = []
    for row in rows:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert float(row["blue_widgets"]) == summary["counters"]["blue_widgets"] == 2 * summary["evaluations"]
        totals.append(float(row["blue_widgets"]))
    assert result.table[0].median_counters == {"blue_widgets": statistics.median(totals)}
    summary_md = (tmp_path / "summary.md").read_text()
    assert "| median blue widgets |" in summary_md and f"| {statistics.median(totals):.6g} |" in summary_md


def test_tune_writes_every_counter_by_name(counting: str, tmp_path: Path) -> None:
    from gfo.spec import resolve
    from gfo.tune import TuneSettings, tune

    spec = resolve("pgpe", counting, overrides=["problem.dim=3", "run.generations=3"])
    result = tune(spec, TuneSettings(trials=2, out=tmp_path, pruner="none"), log=lambda _: None)
    with result.trials_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row in rows:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert float(row["blue_widgets"]) == summary["counters"]["blue_widgets"] == 2 * summary["evaluations"]


def test_progress_shows_every_counter_by_name(counting: str, tmp_path: Path) -> None:
    from gfo.loop import prepare_run_dir, run
    from gfo.progress import ProgressBar
    from gfo.spec import resolve

    spec = resolve("pgpe", counting, overrides=["problem.dim=3", "run.generations=2"])
    prepare_run_dir(tmp_path, resume=False, force=True)
    text = io.StringIO()
    run(spec, tmp_path, callbacks=[ProgressBar(Console(file=text, width=200))])
    lines = [line for line in text.getvalue().splitlines() if line.startswith("generation ")]
    assert len(lines) == 2 and all(re.search(r"  \d+ blue widgets/s$", line) for line in lines), lines
