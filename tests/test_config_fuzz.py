"""Bad configuration values never crash: every `--set` value and every TOML file
ends as a valid run or as one line on stderr with exit code 2, for every registered algorithm,
problem and setting.

Each example goes through `gfo.cli.main` in process with `--out` pointing at a folder that already
holds a run, so a valid configuration also stops with exit code 2 (the "already holds a run" line,
after every value was converted and validated) instead of searching. A valid configuration then runs
two generations through the library: the algorithm's settings on a 3-dimensional sphere, a test
function's settings with a drawn algorithm. LLM problems stop at their config: loading a model is
not a configuration's business. Examples are derandomized, so a failure is the same on every run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gfo import cli
from gfo.algorithms import MAX_FULL_COVARIANCE_DIM, SearchSpec
from gfo.config import RunConfig
from gfo.errors import GfoError
from gfo.problem import Context
from gfo.registry import ALGORITHMS, PROBLEMS
from gfo.spec import RunSpec, resolve

FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: The sentinel's error: the configuration was converted and validated, and only the folder is taken.
OCCUPIED = "already holds a run"
#: Coordinates x candidates above which the two generations are skipped (a valid but big problem).
MAX_RUN_SIZE = 4_000_000


def _is_llm(name: str) -> bool:
    from gfo_llm.config import LLMConfig

    return issubclass(PROBLEMS.get(name).Config, LLMConfig)


def keys(config: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config)]


ALGOS = ALGORITHMS.names()
ALL_PROBLEMS = PROBLEMS.names()
CHEAP = [name for name in ALL_PROBLEMS if not _is_llm(name)]
#: (section, algorithm, problem, key): every setting of every registered algorithm and problem
FIELDS = (
    [("algo", name, "sphere", key) for name in ALGOS for key in keys(ALGORITHMS.get(name).Config)]
    + [("problem", "pgpe", name, key) for name in ALL_PROBLEMS for key in keys(PROBLEMS.get(name).Config)]
    + [("run", "pgpe", "sphere", key) for key in keys(RunConfig)]
)

#: Strings a hand types or a script pastes: wrong types, edges, huge, tiny, negative, NaN and inf,
#: empty, unicode and control characters, list syntax, "none".
WORDS = [
    "", " ", "abc", "none", "null", "true", "false", "maybe", "0", "-0", "1", "-1", "2", "3", "7", "1.5",
    "-2.5", "0.999999", "1e-320", "1e-30", "1e18", "1e30", "1e308", "1e400", "-1e400", "inf", "-inf",
    "Infinity", "nan", "NaN", "-nan", "0x10", "1_000", "+5", "١٢", "é", "😀", "日本", "\x00", "a\nb",
    "\t", ",", "a,b", "q_proj,,v_proj", "tensorboard,tensorboard", "[1, 2]", "{}",
    str(2**31), str(2**63), str(2**64), "9" * 30, "9" * 400, "-" + "9" * 30,
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(WORDS),
    st.integers().map(str),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)


@pytest.fixture(scope="module")
def occupied() -> Iterator[Path]:
    """A folder that holds a run (a config.toml is enough for `prepare_run_dir` to refuse it)."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "taken").mkdir()
        (Path(folder) / "taken" / "config.toml").write_text("")
        yield Path(folder)


def gfo(*args: str) -> tuple[int, str]:
    """`gfo ARGS` through `gfo.cli.main`, the console script's function: (exit code, stderr)."""
    argv, sys.argv = sys.argv, ["gfo", *args]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return code, err.getvalue()


def one_error_line(code: int, err: str, args: tuple[str, ...]) -> str:
    assert "Traceback" not in err, (args, err)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, code, err)
    assert len(lines[0]) < 1000, (args, lines[0])  # names the value without becoming a page
    return lines[0]


def sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def check(folder: Path, *args: str) -> str | None:
    """None when `gfo run ARGS` has a valid configuration, else its one error line (asserted)."""
    command = ("run", *args, "--quiet", "--out", str(folder / "taken"))
    line = one_error_line(*gfo(*command), command)
    return None if OCCUPIED in line else line


def two_generations(spec: RunSpec, folder: Path) -> None:
    """Ask, evaluate, tell twice with `spec`'s problem and algorithm, as `gfo run` would. A refusal
    while building them (a setting that does not fit this problem) must be one line through the CLI."""
    problem = PROBLEMS.get(spec.problem_name)(spec.problem)
    try:
        try:
            problem.prepare()
            search = SearchSpec(
                problem.sense,
                problem.solution_length,
                problem.initial_center(),
                problem.initial_stdev,
                problem.default_popsize,
            )
            algorithm = ALGORITHMS.get(spec.algorithm)(spec.algo, search, spec.run.seed)
        except GfoError as exc:
            assert "\n" not in str(exc), str(exc)
            (folder / "fresh.toml").write_text(spec.to_toml())
            command = ("run", "--config", str(folder / "fresh.toml"), "--quiet", "--out", str(folder / "new"))
            assert one_error_line(*gfo(*command), command) == f"error: {exc}"
            return
        if algorithm.popsize * problem.solution_length > MAX_RUN_SIZE:
            return
        for generation in range(2):
            population = algorithm.ask()
            assert population.shape == (algorithm.popsize, problem.solution_length)
            fitness = problem.evaluate(population, Context(generation=generation, seed=spec.run.seed)).fitness
            # the loop's rule: the algorithm sees a non-finite value as worse than the worst finite one
            finite = fitness[torch.isfinite(fitness)]
            worst = (finite.max() + 1 if problem.sense == "min" else finite.min() - 1) if len(finite) else 0.0
            fitness = torch.where(torch.isfinite(fitness), fitness, torch.as_tensor(worst).to(fitness))
            algorithm.tell(population, fitness)
        algorithm.center()
        algorithm.state_dict()
    finally:
        problem.close()


# ---------------------------------------------------------------- --set values


@pytest.mark.parametrize(("section", "algo", "problem", "key"), FIELDS, ids=lambda v: str(v))
@settings(FUZZ, max_examples=4)  # x 170 settings, and the 7 examples below for each
@given(value=VALUES)
@example(value="inf")
@example(value="nan")
@example(value="1e30")
@example(value="-1")
@example(value="0")
@example(value="")
@example(value=str(2**64))
def test_a_set_value_is_a_valid_run_or_one_line_and_exit_2(
    section: str, algo: str, problem: str, key: str, value: str, occupied: Path
) -> None:
    overrides = [
        f"{section}.{key}={value}",
        *(["problem.dim=3"] if problem == "sphere" and key != "dim" else []),
    ]
    if check(occupied, "--algo", algo, "--problem", problem, *sets(overrides)) is not None:
        return
    if problem in CHEAP and section != "run":
        two_generations(resolve(algo, problem, overrides=overrides), occupied)


@pytest.mark.parametrize("problem", CHEAP)
@FUZZ
@given(algo=st.sampled_from(ALGOS), dim=st.one_of(st.integers(-3, 12), st.integers()), center=VALUES)
@example(algo="cmaes", dim=1, center="3")
@example(algo="sep-cmaes", dim=1, center="3")
@example(algo="cmaes", dim=20_000, center="3")
@example(algo="pgpe", dim=3, center="1e30")
def test_problem_settings_with_every_algorithm(
    problem: str, algo: str, dim: int, center: str, occupied: Path
) -> None:
    """A test function's dimension and centre meet every algorithm: CMA-ES refuses a dimension of 1
    (EvoTorch's cannot hold it) and, in full, one whose n x n matrices would not fit."""
    overrides = [f"problem.dim={dim}"] + ([f"problem.center={center}"] if problem != "bbob" else [])
    big = dim > 1000 and not (algo in ("cmaes", "xnes") and dim > MAX_FULL_COVARIANCE_DIM)  # refused unbuilt
    if check(occupied, "--algo", algo, "--problem", problem, *sets(overrides)) is None and not big:
        two_generations(resolve(algo, problem, overrides=overrides), occupied)


@FUZZ
@given(
    item=st.one_of(
        st.text(max_size=20),
        st.builds(
            lambda section, key, value: f"{section}.{key}={value}",
            st.sampled_from(["algo", "problem", "run", "", "x"]),
            st.text(max_size=8),
            VALUES,
        ),
    )
)
@example(item="=")
@example(item="algo.=1")
@example(item=".x=1")
@example(item="algo.é😀=1")
@example(item="algo.a\nb=1")
@example(item="é.x=1")
def test_any_set_item_is_a_valid_run_or_one_line_and_exit_2(item: str, occupied: Path) -> None:
    """Malformed `--set` items: no '=', no section, unknown sections and keys, unicode."""
    check(occupied, "--algo", "pgpe", "--problem", "sphere", "--set", item)


SHORTCUTS = ["--popsize", "--seed", "--generations", "--actors", "--gpus-per-actor", "--track"]


@pytest.mark.parametrize("option", SHORTCUTS)
@FUZZ
@given(value=VALUES)
@example(value="99999999999999999999999")
@example(value="nan")
@example(value="inf")
def test_a_shortcut_option_is_a_valid_run_or_exit_2(option: str, value: str, occupied: Path) -> None:
    """`--popsize`, `--seed`, ...: typer parses the number, the config validates it."""
    check(occupied, "--algo", "pgpe", "--problem", "sphere", f"{option}={value}")


# ---------------------------------------------------------------- TOML files

TOML_SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-5, max_value=50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=8),
    st.sampled_from(WORDS),
    st.dates(),
    st.datetimes(),
)
TOML_VALUES = st.one_of(
    TOML_SCALARS,
    st.lists(TOML_SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=4), TOML_SCALARS, max_size=2),
)
ALGO_KEYS = sorted({key for name in ALGOS for key in keys(ALGORITHMS.get(name).Config)})
PROBLEM_KEYS = sorted({key for name in ALL_PROBLEMS for key in keys(PROBLEMS.get(name).Config)})
RUN_KEYS = keys(RunConfig)


def _section(keys: list[str]) -> st.SearchStrategy[Any]:
    table = st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=6)), TOML_VALUES, max_size=3)
    return st.one_of(table, table, table, TOML_SCALARS)  # mostly a table, sometimes not


TOML_FILES = st.fixed_dictionaries(
    {},
    optional={
        "algorithm": st.one_of(st.sampled_from(ALGOS), st.sampled_from(ALGOS), TOML_SCALARS),
        "problem_name": st.one_of(st.sampled_from(ALL_PROBLEMS), st.sampled_from(CHEAP), TOML_SCALARS),
        "algo": _section(ALGO_KEYS),
        "problem": _section(PROBLEM_KEYS),
        "run": _section(RUN_KEYS),
        "unknown": TOML_VALUES,
        "é😀": TOML_SCALARS,
    },
)


@settings(FUZZ, max_examples=150)
@given(document=TOML_FILES)
@example(document={"algorithm": "pgpe", "problem_name": "arithmetic", "problem": {"target_modules": 5}})
@example(document={"algorithm": "pgpe", "problem_name": "sphere", "run": {"track": 5}})
@example(document={"algorithm": 5, "problem_name": "sphere"})
@example(document={"algorithm": "pgpe", "problem_name": ["sphere"]})
@example(document={"algorithm": "pgpe", "problem_name": "sphere", "problem": {"center": 10**400}})
@example(document={"algorithm": "pgpe", "problem_name": "sphere", "problem": {"dim": 1e300}})
@example(document={"algorithm": "cem", "problem_name": "sphere", "algo": {"parenthood_ratio": 1e-300}})
@example(document={"algorithm": "cmaes", "problem_name": "sphere", "algo": {"c_mu_ratio": 1e6}})
@example(document={"algorithm": "pgpe", "problem_name": "bbob", "problem": {"instance": 2**40}})
@example(document={"algorithm": "pgpe", "problem_name": "sphere", "algo": {"a\nb": 1}, "run": {"seed": True}})
def test_a_config_file_is_a_valid_run_or_exit_2(document: dict[str, Any], occupied: Path) -> None:
    """Wrong types, unknown keys and sections, unicode, huge, NaN and infinite numbers in `--config`."""
    path = occupied / "fuzz.toml"
    path.write_text(tomli_w.dumps(document), encoding="utf-8")
    if check(occupied, "--config", str(path)) is not None:
        return
    spec = resolve(None, None, config_file=path)
    if spec.problem_name in CHEAP and getattr(spec.problem, "dim", 3) <= 1000:
        two_generations(spec, occupied)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode)))
@example(raw=b"\xef\xbb\xbf[run]\nseed = 1\n")  # a BOM
@example(raw=b"[run]\nseed = 1 # \xe9\n")  # Latin-1, not UTF-8
@example(raw=b"[run]\x00\n")
@example(raw=b"[algo\n")
@example(raw=b"[run]\nseed = 1\n[run]\nseed = 2\n")
def test_a_config_file_of_any_bytes_is_a_valid_run_or_exit_2(raw: bytes, occupied: Path) -> None:
    path = occupied / "raw.toml"
    path.write_bytes(raw)
    check(occupied, "--algo", "pgpe", "--problem", "sphere", "--config", str(path))
