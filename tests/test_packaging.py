"""The packaging holds together: pyproject's ranges, the lock, the lowest versions and a fresh install.

- every version pinned in constraints.txt (what `make` installs) lies inside the range pyproject.toml
  declares for it, in the dependencies and in every extra; the checker is shown failing too;
- requirements-lowest.txt (`make test-min`) pins exactly pyproject's lower bounds;
- `gfo_llm.extras` checks the modules that pyproject's extras install;
- with GFO_PINS=FILE (`make test-min`), the versions imported are that file's;
- marked `install` (`make test-min`, minutes): a fresh venv with `pip install .` and no extra runs a
  benchmark problem and answers an LLM problem with the extra's install line.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from gfo_llm.extras import MODULES, require

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
LOWEST = ROOT / "requirements-lowest.txt"
#: declared packages the lock leaves out, and why
UNPINNED = {"vllm": "vLLM 0.33 needs torch 2.14: it joins no CPU environment (constraints.txt)"}


def read_pins(path: Path) -> dict[str, Version]:
    """`name==version` lines of a pip requirements or constraints file, by canonical name."""
    pins: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def declared() -> dict[str, list[Requirement]]:
    """pyproject's requirements by group: "dependencies" and each extra, self-references included."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    return {group: [Requirement(text) for text in texts] for group, texts in groups.items()}


def expand(group: str, groups: dict[str, list[Requirement]]) -> list[Requirement]:
    """The third-party requirements of a group, with those of the extras it names (`gfo[llm]`)."""
    found: list[Requirement] = []
    for requirement in groups[group]:
        if requirement.name == "gfo":
            for extra in sorted(requirement.extras):
                found += expand(extra, groups)
        else:
            found.append(requirement)
    return found


def out_of_range(requirements: list[Requirement], pins: dict[str, Version]) -> list[str]:
    """What is wrong with `pins` for `requirements`: a package without a pin, or a pin outside its range."""
    problems = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name == "gfo" or name in UNPINNED:  # `gfo[llm]`: the llm group is checked as itself
            continue
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{requirement}: no pin")
        elif not requirement.specifier.contains(pin, prereleases=True):
            problems.append(f"{requirement}: pinned {pin}")
    return problems


def lower_bound(requirement: Requirement) -> Version:
    """The version of a requirement's one `>=` clause."""
    (bound,) = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    return bound


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # without PYTHONPATH: `make test-min` points it at .venv-min/, which holds transformers
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, timeout=900
    )


# ---------------------------------------------------------------------------- ranges and pins


def test_every_pin_of_the_lock_lies_inside_its_declared_range() -> None:
    groups, pins = declared(), read_pins(LOCK)
    problems = {group: out_of_range(reqs, pins) for group, reqs in groups.items()}
    assert {group: found for group, found in problems.items() if found} == {}
    assert len(pins) > 100  # the whole transitive set, not only the declared packages


def test_the_checker_finds_a_pin_outside_its_range_and_a_missing_one() -> None:
    requirements = [Requirement("transformers>=5.17,<6"), Requirement("peft>=0.18,<1")]
    assert out_of_range(requirements, {"transformers": Version("5.17.0"), "peft": Version("0.21.2")}) == []
    assert out_of_range(requirements, {"transformers": Version("6.0.0"), "peft": Version("0.17.1")}) == [
        "transformers<6,>=5.17: pinned 6.0.0",
        "peft<1,>=0.18: pinned 0.17.1",
    ]
    assert out_of_range(requirements, {"transformers": Version("5.19")}) == ["peft<1,>=0.18: no pin"]
    # a local version label (the CPU wheel's 2.13.0+cpu) is inside the range of its public version
    assert out_of_range([Requirement("torch>=2.11,<3")], {"torch": Version("2.13.0+cpu")}) == []


def test_every_requirement_is_a_range_up_to_the_next_major() -> None:
    for group, requirements in declared().items():
        for requirement in requirements:
            if requirement.name == "gfo":
                continue
            operators = sorted(spec.operator for spec in requirement.specifier)
            assert operators == ["<", ">="], f"{group}: {requirement} is not a range >=LOW,<HIGH"


def test_self_references_name_extras_that_exist() -> None:
    groups = declared()
    for group, requirements in groups.items():
        for requirement in requirements:
            if requirement.name == "gfo":
                assert requirement.extras <= groups.keys() - {"dependencies", group}, (
                    f"{group}: {requirement}"
                )


def test_the_lowest_versions_are_pyprojects_lower_bounds() -> None:
    lowest, llm = read_pins(LOWEST), {r.name: r for r in declared()["llm"]}
    # 5.17: the GPU machine's transformers, which the range must keep admitting
    assert lowest["transformers"] == lower_bound(llm["transformers"]) == Version("5.17")
    assert lowest["peft"] == lower_bound(llm["peft"])
    # what else it pins, transformers 5.17 needs at a version the lock's datasets admits too
    hub = importlib.metadata.requires("datasets") or []
    assert any(
        Requirement(r).name == "huggingface-hub"
        and Requirement(r).specifier.contains(lowest["huggingface-hub"])
        for r in hub
    )


def test_extras_checks_the_modules_pyprojects_extras_install() -> None:
    groups = declared()
    for extra, modules in MODULES.items():
        names = {canonicalize_name(r.name) for r in expand(extra, groups)}
        assert names == set(modules), extra


def test_require_names_the_missing_modules_and_the_install_line() -> None:
    require("grpo", "gfo sft")  # all installed here: no error
    # a Python without site-packages has none of the extras: the real lookups, in a subprocess
    code = (
        "import sys; sys.path = [p for p in sys.path if 'site-packages' not in p]; "
        "from gfo_llm.extras import require; require('grpo', 'gfo sft')"
    )
    refused = run(sys.executable, "-c", code, cwd=ROOT)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "gfo.errors.GfoError: gfo sft needs transformers, peft, accelerate, gguf, trl, datasets "
        "(the grpo extra): pip install 'gfo[grpo]'"
    )


def test_the_imported_versions_are_the_pinned_ones() -> None:
    """`make test-min` sets GFO_PINS=requirements-lowest.txt: the suite really ran on those versions."""
    pins_file = os.environ.get("GFO_PINS")
    if not pins_file:
        pytest.skip("GFO_PINS is not set (make test-min sets it)")
    pins = read_pins(ROOT / pins_file)
    # public versions: the lock's torch==2.13.0 is the installed 2.13.0+cpu
    installed = {name: Version(Version(importlib.metadata.version(name)).public) for name in pins}
    assert installed == pins
    if "transformers" in pins:  # and the module imported is that distribution's
        import transformers

        assert Version(transformers.__version__) == pins["transformers"]


# ---------------------------------------------------------------------------- a fresh install


@pytest.mark.install
def test_a_fresh_install_without_extras_runs_the_optimizer_and_names_the_llm_extra(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: pip builds in the tree it is given
    source.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    for package in ("gfo", "gfo_llm", "problems"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    python, gfo = venv / "bin" / "python", venv / "bin" / "gfo"
    installed = run(python, "-m", "pip", "install", "-q", "-c", LOCK, source)
    assert installed.returncode == 0, installed.stderr[-3000:]

    probe = "import importlib.util as u, torch; print(torch.__version__, u.find_spec('transformers') is None)"
    assert run(python, "-c", probe).stdout.split() == ["2.13.0+cpu", "True"]  # the CPU wheel, no LLM stack

    for args in (["--help"], ["list"]):
        shown = run(gfo, *args)
        assert shown.returncode == 0, shown.stderr
    assert "arithmetic" in shown.stdout and "sep-cmaes" in shown.stdout

    # the generic optimizer: the same result as in the full environment (same code, torch and seed)
    argv = ["run", "--algo", "sep-cmaes", "--problem", "ellipsoid", "--set", "problem.dim=5"]
    argv += ["--generations", "20", "--quiet", "--force", "--out"]
    fresh = run(gfo, *argv, tmp_path / "fresh")
    assert fresh.returncode == 0, fresh.stderr
    full = run(Path(sys.executable).parent / "gfo", *argv, tmp_path / "full")
    assert full.returncode == 0, full.stderr
    summaries = [json.loads((tmp_path / out / "summary.json").read_text()) for out in ("fresh", "full")]
    assert summaries[0]["generations"] == 20
    assert summaries[0]["best"] == summaries[1]["best"]

    # the LLM half: one line naming the extra, exit code 2, no traceback
    for command, extra in [(["run", "--algo", "pgpe"], "llm"), (["eval"], "llm"), (["sft"], "grpo")]:
        refused = run(gfo, *command, "--problem", "arithmetic", "--out", tmp_path / command[0])
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2, refused.stderr
        assert len(lines) == 1 and f"pip install 'gfo[{extra}]'" in lines[0], refused.stderr
