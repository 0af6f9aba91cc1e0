"""Shared fixtures and helpers (test modules import these, never each other)."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: `$GFO_DATA_DIR`, else the shared data folder next to the repository (holding gsm8k/{train,test}.jsonl).
DATA_DIR = Path(os.environ.get("GFO_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def tiny_lm() -> tuple[Any, Any]:
    """`(model, tokenizer)` of `gfo_llm.testing.tiny_model(seed=0)`, float32, shared by the session.

    Do not modify it (PiSSA init and the batched engine change a model in place): use `tiny_lm_copy`.
    """
    from gfo.errors import GfoError
    from gfo_llm.testing import tiny_model

    try:
        return tiny_model(seed=0)
    except GfoError as exc:  # the tokenizer comes from the bundled SmolLM2 package
        pytest.skip(f"tiny model unavailable: {exc}")


@pytest.fixture
def torch_single_thread() -> Iterator[None]:
    """One torch thread for the duration of a test: tiny models gain nothing from threads, and on a
    busy machine OpenMP's spinning workers make every small op wait for a time slice (10x slower)."""
    from gfo.threads import one_thread

    with one_thread():
        yield


@pytest.fixture
def tiny_lm_copy(tiny_lm: tuple[Any, Any]) -> tuple[Any, Any]:
    """A private deep copy of the tiny model (same weights every time) and the shared tokenizer."""
    model, tokenizer = tiny_lm
    return copy.deepcopy(model), tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_lm: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama (`gfo_llm.testing.tiny_model`) saved once as a model directory, float32."""
    model, tokenizer = tiny_lm
    directory = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def generate_one(engine: Any, vector: Any, prompts: list[str], max_new_tokens: int) -> Any:
    """One candidate (None: the space's centre, i.e. the initial adapter) through an engine's `generate`."""
    import torch

    center = engine.space.center() if vector is None else torch.as_tensor(vector)
    return engine.generate(center.reshape(1, -1), prompts, max_new_tokens)


@pytest.fixture(scope="session")
def gsm8k_data_dir() -> Path:
    """The folder holding gsm8k/{train,test}.jsonl; GSM8K tests are skipped without it."""
    if not (DATA_DIR / "gsm8k" / "train.jsonl").is_file():
        pytest.skip(f"GSM8K data not found under {DATA_DIR} (set GFO_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="module")
def no_plots() -> Iterator[None]:
    """curve.png is no result and takes 3/4 of a small in-process run: a module that does not check
    it skips it with `pytestmark = pytest.mark.usefixtures("no_plots")`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("gfo.plots.plot_run", lambda run_dir: run_dir)
        yield


# ---------------------------------------------------------------- runs, for the tests that stop, kill
# and resume them (test_resume, test_checkpoint, test_signals, test_run_record, test_tracking). Plain
# functions, imported with `from conftest import ...`: test modules never import each other.

ROOT = Path(__file__).resolve().parents[1]
# Slow enough per generation (tens of ms) to be killed mid-generation, cheap enough to redo.
KILLABLE = ["--problem", "rosenbrock", "--set", "problem.dim=2000", "--popsize", "20"]


def start_run(out: Path, *args: str, generations: int | None = None) -> subprocess.Popen[bytes]:
    """A real `gfo run` process (output to files: a full pipe would block it)."""
    extra = ["--generations", str(generations)] if generations else []
    log = out.parent / f"{out.name}.log"
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "gfo.cli", "run", *args, *extra, "--quiet"],
            cwd=ROOT,
            stdout=fh,
            stderr=fh,
        )


def complete_lines(out: Path) -> int:
    """Generations in metrics.jsonl (a torn last line does not count)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_bytes().split(b"\n") if line.endswith(b"}"))


def wait_for_lines(proc: subprocess.Popen[bytes], out: Path, n: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while complete_lines(out) < n:
        if proc.poll() is not None:
            log = (out.parent / f"{out.name}.log").read_text()
            raise AssertionError(f"gfo run exited {proc.returncode} before generation {n}:\n{log}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no generation {n} after {timeout} s")
        time.sleep(0.01)


def checkpoint_generation(out: Path) -> int:
    from gfo import checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # atomic writes: a kill never leaves a torn checkpoint.pt
        return int(checkpoint.load(out)["loop"]["generation"])


def run_here(out: Path, algo: str, generations: int, *extra: str, problem: str = "rosenbrock") -> None:
    """`gfo run` in process (a 6-d test function unless `problem` says otherwise)."""
    from gfo import loop
    from gfo.spec import resolve

    small = ["problem.dim=6"] if problem == "rosenbrock" else []
    overrides = [f"run.generations={generations}", "run.progress=false", *small, *extra]
    spec = resolve(algo, problem, overrides=overrides)
    loop.prepare_run_dir(out, resume=False, force=False)
    loop.run(spec, out)


def resume_here(out: Path, generations: int | None = None, callbacks: list[Any] | None = None) -> None:
    """`gfo run --resume OUT [--generations N]` in process."""
    from gfo import loop
    from gfo.config import read_toml
    from gfo.spec import resolve

    overrides = [f"run.generations={generations}"] if generations else []
    spec = resolve(None, None, overrides=overrides, base=read_toml(out / "config.toml"))
    loop.prepare_run_dir(out, resume=True, force=False)
    loop.run(spec, out, resume=True, callbacks=callbacks)


@functools.cache
def _timing() -> frozenset[str]:
    from gfo import loop

    return frozenset(loop.VOLATILE)  # times and memory


def metrics(out: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without its timings."""
    timing = _timing()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in timing and not k.endswith("_per_s")} for r in rows]


def assert_same_state(a: Any, b: Any, where: str = "state") -> None:
    """Nested dicts, lists, tensors and numbers are equal, bit for bit, NaN included; timings aside."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a.keys(), b.keys())
        for key in a:
            if key not in _timing():
                assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b, where
    else:
        assert a == b, (where, a, b)


def assert_same_results(ref: Path, other: Path) -> None:
    """Two run folders: everything that is not a timing is bit-identical."""
    import torch
    from safetensors.torch import load_file

    from gfo import checkpoint

    ref_rows, other_rows = metrics(ref), metrics(other)
    assert len(ref_rows) == len(other_rows), (len(ref_rows), len(other_rows))
    for a, b in zip(ref_rows, other_rows, strict=True):
        assert a == b, (a, b)
    best_a, best_b = load_file(ref / "best.safetensors"), load_file(other / "best.safetensors")
    assert best_a.keys() == best_b.keys()
    for key in best_a:
        assert torch.equal(best_a[key], best_b[key]), key
    assert_same_state(checkpoint.load(ref), checkpoint.load(other), "checkpoint")
    summaries = [json.loads((d / "summary.json").read_text()) for d in (ref, other)]
    assert_same_state(summaries[0], summaries[1], "summary")


# ---------------------------------------------------------------- strict JSON (test_run_record,
# test_llm_problem, test_sft_eval)


def strict(text: str) -> Any:
    """json.loads refusing NaN and Infinity, which are not JSON (RFC 8259)."""

    def refuse(word: str) -> Any:
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def rows_of(out: Path) -> list[dict[str, Any]]:
    """metrics.jsonl, read strictly."""
    return [strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def every_written_file_is_strict_json(out: Path) -> int:
    """Parse every .json and .jsonl file under `out` strictly; returns how many were read."""
    files = [p for p in out.rglob("*") if p.suffix in (".json", ".jsonl")]
    for path in files:
        text = path.read_text()
        lines = text.splitlines() if path.suffix == ".jsonl" else [text]
        for i, line in enumerate(lines):
            try:
                strict(line)
            except ValueError as exc:
                raise AssertionError(f"{path.relative_to(out)}:{i + 1}: {exc}") from None
    return len(files)


def gfo(*args: str) -> tuple[int, str]:
    """Run `gfo ARGS` through the entry point function, in this process: (exit code, stderr)."""
    import contextlib
    import io

    from gfo.cli import main

    err = io.StringIO()
    argv = sys.argv
    sys.argv = ["gfo", *args]
    try:
        with contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    return code, err.getvalue()
