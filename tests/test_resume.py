"""Exact resume: a run stopped anywhere and resumed ends bit-identical to one never stopped.

"Identical" means every line of metrics.jsonl minus its timing keys, best.safetensors, the final
algorithm state (centre, step sizes, RNG) and summary.json minus timing. The in-process tests split
runs of every registered algorithm; the subprocess tests SIGKILL a real `gfo run` at random moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    KILLABLE,
    assert_same_results,
    checkpoint_generation,
    complete_lines,
    metrics,
    resume_here,
    run_here,
    start_run,
    wait_for_lines,
)

from gfo import checkpoint, loop, rundir
from gfo.config import read_toml
from gfo.loop import Callback
from gfo.registry import ALGORITHMS
from gfo.spec import resolve

ALGOS = ALGORITHMS.names()
pytestmark = pytest.mark.usefixtures("no_plots")


class StartedAt(Callback):
    def __init__(self) -> None:
        self.generation = -1

    def on_start(self, spec: Any, problem: Any, algorithm: Any, start_generation: int) -> None:
        self.generation = start_generation


# ---------------------------------------------------------------- in process, every algorithm


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An uninterrupted 12-generation run of every algorithm (6-d Rosenbrock)."""
    root = tmp_path_factory.mktemp("reference")
    for algo in ALGOS:
        run_here(root / algo, algo, 12)
    return {algo: root / algo for algo in ALGOS}


def test_every_builtin_algorithm_is_covered() -> None:
    assert {"es", "pgpe", "snes", "xnes", "cmaes", "sep-cmaes", "cem"} <= set(ALGOS)


@pytest.mark.parametrize("algo", ALGOS)
def test_stop_and_resume_is_bit_identical(algo: str, references: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_here(out, algo, 5)
    assert len(metrics(out)) == 5
    started = StartedAt()
    resume_here(out, 12, callbacks=[started])
    assert started.generation == 5
    assert_same_results(references[algo], out)


@pytest.mark.parametrize("algo", ["cmaes", "pgpe"])
def test_resume_after_every_generation(algo: str, references: dict[str, Path], tmp_path: Path) -> None:
    """Stopped after each generation in turn (CMA-ES decomposes C only every few steps)."""
    out = tmp_path / "run"
    run_here(out, algo, 1)
    for generations in range(2, 13):
        resume_here(out, generations)
    assert_same_results(references[algo], out)


def test_resuming_a_finished_run_changes_nothing_and_extending_it_is_exact(
    references: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run_here(out, "sep-cmaes", 8)
    before = metrics(out)
    resume_here(out)
    assert metrics(out) == before
    resume_here(out, 12)
    assert_same_results(references["sep-cmaes"], out)


def test_lines_written_after_the_last_checkpoint_are_dropped(
    references: dict[str, Path], tmp_path: Path
) -> None:
    """A kill between appending generation 5's line and its checkpoint: the line goes, 5 is redone."""
    out = tmp_path / "run"
    run_here(out, "xnes", 5)
    kept = (out / "metrics.jsonl").read_text()
    stale = json.dumps({**json.loads(kept.splitlines()[-1]), "generation": 5, "best": -1.0})
    (out / "metrics.jsonl").write_text(kept + stale + "\n" + '{"generation": 6, "be')  # and a torn line
    rundir.truncate_metrics(out / "metrics.jsonl", 5)
    assert (out / "metrics.jsonl").read_text() == kept
    (out / "metrics.jsonl").write_text(kept + stale + "\n" + '{"generation": 6, "be')
    started = StartedAt()
    resume_here(out, 12, callbacks=[started])
    assert started.generation == 5
    assert_same_results(references["xnes"], out)


def test_kill_between_the_checkpoint_renames_resumes_from_the_previous_file(
    references: dict[str, Path], tmp_path: Path
) -> None:
    """`checkpoint.save` renames current -> previous, then writes current: a kill in between leaves
    only checkpoint.prev.pt, which is the newest state and must be used (not a restart from 0)."""
    out = tmp_path / "run"
    run_here(out, "cem", 6)
    os.replace(out / checkpoint.NAME, out / checkpoint.PREVIOUS)
    started = StartedAt()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resume_here(out, 12, callbacks=[started])
    assert started.generation == 6
    assert_same_results(references["cem"], out)


def test_kill_before_the_first_checkpoint_starts_over(references: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_here(out, "snes", 3)
    for name in (checkpoint.NAME, checkpoint.PREVIOUS, "summary.json", "best.safetensors"):
        (out / name).unlink()
    started = StartedAt()
    resume_here(out, 12, callbacks=[started])
    assert started.generation == 0
    assert_same_results(references["snes"], out)


# ---------------------------------------------------------------- settings changed on resume


@pytest.mark.parametrize(
    ("algo", "change", "was"),
    [
        ("pgpe", "algo.stdev_init=0.5", "none"),  # the initial sigma: the checkpoint's distribution wins
        ("es", "algo.center_learning_rate=0.01", "none"),  # Adam's step size is in its saved state
        ("cmaes", "problem.stdev=0.5", "2.0"),  # the problem's initial spread, when stdev_init is unset
        ("snes", "run.seed=3", "0"),  # the RNG is in the checkpoint, mini-batches follow the seed
    ],
)
def test_a_resume_refuses_a_setting_the_checkpoint_would_override(
    algo: str,
    change: str,
    was: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Applied, the loaded state would silently undo it while config.toml claimed it: refused, in one
    line naming the setting and both values, and nothing in the folder changes."""
    from gfo import cli

    out = tmp_path / "run"
    run_here(out, algo, 3)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    key, _, new = change.partition("=")
    monkeypatch.setattr(
        sys, "argv", ["gfo", "run", "--resume", str(out), "--generations", "5", "--set", change]
    )
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {out} was started with {key}={was}; a resume cannot change it to {new} (the checkpoint "
        "holds the state it set up); resume without that change, or start a new --out"
    ]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_resume_applies_other_settings_and_records_where_they_changed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_here(out, "pgpe", 3, "algo.popsize=8")
    overrides = ["run.generations=5", "algo.popsize=12", "algo.momentum=0.5"]
    spec = resolve(None, None, overrides=overrides, base=read_toml(out / "config.toml"))
    loop.prepare_run_dir(out, resume=True, force=False)
    summary = loop.run(spec, out, resume=True)
    rows = metrics(out)
    assert [r["evaluations"] for r in rows] == [8, 16, 24, 36, 48]  # applied from generation 3 on
    assert [g for g, r in enumerate(rows) if "changed" in r] == [3]
    assert rows[3]["changed"] == {"algo.popsize": [8, 12], "algo.momentum": [0.9, 0.5]}
    changes = [
        {"generation": 3, "setting": "algo.popsize", "from": 8, "to": 12},
        {"generation": 3, "setting": "algo.momentum", "from": 0.9, "to": 0.5},
    ]
    assert summary["changes"] == changes
    assert read_toml(out / "config.toml")["algo"]["popsize"] == 12
    resume_here(out, 7)  # a further resume without changes keeps the record as it is
    assert json.loads((out / "summary.json").read_text())["changes"] == changes
    assert [g for g, r in enumerate(metrics(out)) if "changed" in r] == [3]


# ---------------------------------------------------------------- a real process, SIGKILL


def kill_and_resume(tmp_path: Path, algo: str, kills: int, seed: int) -> None:
    """SIGKILL `gfo run` `kills` times at random moments (mid-generation, mid-checkpoint and, with
    more than two kills, once during start-up), resume it each time with `gfo run --resume`, and
    compare the end with an uninterrupted run."""
    rng = random.Random(seed)
    out = tmp_path / "killed"
    proc = start_run(out, "--algo", algo, *KILLABLE, "--out", str(out), generations=100_000)
    done = 0
    for k in range(kills):
        if k == kills - 1 and kills > 2:
            time.sleep(rng.uniform(0.0, 3.0))  # imports, checkpoint loading or the first generation
        else:
            # +2 at least: a resumed process still shows the dropped line of the generation in flight
            wait_for_lines(proc, out, done + rng.randint(2, 5))
            time.sleep(rng.uniform(0.0, 0.05))  # a generation takes tens of ms
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if checkpoint.exists(out):
            lines = complete_lines(out)
            done = checkpoint_generation(out)
            assert lines - 1 <= done <= lines, (lines, done)  # at most the generation in flight is lost
        if k < kills - 1:
            proc = start_run(out, "--resume", str(out))
    # The last leg: the same command, shortened to a few generations past the last checkpoint.
    generations = done + 4
    final = start_run(out, "--resume", str(out), generations=generations)
    assert final.wait(timeout=300) == 0, (out.parent / "killed.log").read_text()
    assert not list(out.glob(".*.tmp*")), "stale temporary files left behind"

    reference = tmp_path / "reference"
    overrides = ["problem.dim=2000", "algo.popsize=20", f"run.generations={generations}"]
    loop.prepare_run_dir(reference, resume=False, force=False)
    loop.run(resolve(algo, "rosenbrock", overrides=overrides), reference)
    assert_same_results(reference, out)


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path: Path) -> None:
    kill_and_resume(tmp_path, "pgpe", kills=2, seed=7)  # 3 processes: ~5 s of imports each


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGOS)
def test_sigkill_every_algorithm(algo: str, tmp_path: Path) -> None:
    kill_and_resume(tmp_path, algo, kills=4, seed=sum(map(ord, algo)))


# ---------------------------------------------------------------- an LLM problem (tiny model)

LLM = ["problem.dtype=fp32", "problem.max_new_tokens=6", "problem.batch_size=2", "problem.eval_limit=2",
       "problem.eval_every=2", "problem.rank=2", "problem.train_size=12", "problem.test_size=4",
       "algo.popsize=4"]  # fmt: skip


@pytest.fixture(scope="module")
def text_reward_problem() -> str:
    """Arithmetic prompts rewarded by a hash of the completion's text: the tiny random model scores 0
    on real tasks, and exactness is only worth checking where candidates differ."""
    from gfo.registry import PROBLEMS
    from gfo_llm.problem import LLMProblem
    from problems.arithmetic import Arithmetic

    class TextReward(Arithmetic):
        name = "text-reward-resume"

        def reward(self, completions: Any, examples: Any) -> list[float]:
            return [sum(map(ord, text)) % 101 / 100 for text in completions]

    if TextReward.name not in PROBLEMS.names():
        PROBLEMS.register(TextReward.name, LLMProblem.for_task(TextReward))
    return TextReward.name


@pytest.fixture
def llm_mode() -> Any:
    enabled, threads = torch.is_grad_enabled(), torch.get_num_threads()
    torch.set_num_threads(1)  # 64-wide matrices: one thread is faster, far faster on a busy machine
    yield
    torch.set_grad_enabled(enabled)  # LLMProblem.prepare turns autograd off process-wide
    torch.set_num_threads(threads)


class StopAfter(Callback):
    """What a first Ctrl-C does, at the end of generation `generation` (after its checkpoint)."""

    def __init__(self, generation: int, out: Path) -> None:
        self.generation, self.out = generation, out

    def on_generation(self, record: dict[str, Any]) -> None:
        if record["generation"] == self.generation:
            raise loop.Interrupted(signal.SIGINT, self.out)


@pytest.mark.parametrize("algo", ["sep-cmaes", pytest.param("pgpe", marks=pytest.mark.slow)])
def test_llm_run_resumes_bit_identically(
    algo: str, text_reward_problem: str, tiny_model_dir: Path, tmp_path: Path, llm_mode: Any
) -> None:
    """Mini-batches from (seed, generation), held-out bests, samples.jsonl and the exported adapter.
    Stopped like a signal does (a shorter first leg would add a held-out evaluation at its end)."""
    extra = [f"problem.model={tiny_model_dir}", *LLM]
    ref, out = tmp_path / "reference", tmp_path / "run"
    run_here(ref, algo, 3, *extra, problem=text_reward_problem)
    spec = resolve(algo, text_reward_problem, overrides=["run.generations=3", "run.progress=false", *extra])
    loop.prepare_run_dir(out, resume=False, force=False)
    with pytest.raises(loop.Interrupted):
        loop.run(spec, out, callbacks=[StopAfter(1, out)])
    (out / "samples.jsonl").write_text((out / "samples.jsonl").read_text() + '{"generation": 2, "prom')
    resume_here(out)
    assert_same_results(ref, out)
    rows = metrics(ref)
    assert len({r["best"] for r in rows}) > 1, "candidates never differed: a weak check"
    assert "heldout" in rows[1] and "heldout" in rows[2]  # every 2 generations, and at the end
    assert (ref / "samples.jsonl").read_text() == (out / "samples.jsonl").read_text()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (ref / "adapter" / name).read_bytes() == (out / "adapter" / name).read_bytes(), name
