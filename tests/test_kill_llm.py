"""Kill tests of an LLM run: a real `gfo run` of a tiny-model LLM problem, killed in each
phase of its work, resumes to the results of a run never stopped.

SIGKILL lands during a generation, during a held-out evaluation, during the checkpoint write and
during the adapter export; Ctrl-C (SIGINT to the whole process group, as a terminal sends it) stops
a run on two Ray actors. After each, `gfo run --resume` finishes the run and everything that is no
timing must equal the uninterrupted run's: metrics.jsonl, summary.json, the checkpoint, best and
held-out bests, samples.jsonl and the bytes of the exported adapter.

A kill loses what the process held in memory, so what a kill point tests is the run directory it
leaves. Each point is reached exactly, with no timing luck: the test problem below (a plug-in the
subprocess loads through the `gfo.problems` entry point, as a third-party problem would be) stops
itself with SIGSTOP where `GFO_KILL_TEST_PAUSE` says, and the test kills the stopped process. The
checkpoint write is caught inside `write()`: the test puts a named pipe where `checkpoint.atomic_write`
opens its temporary file, so the writer blocks with part of the checkpoint written.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import assert_same_results, checkpoint_generation, complete_lines

from gfo import checkpoint, loop
from gfo.problem import Context, Evaluation
from gfo.registry import PROBLEMS
from gfo.spec import resolve
from gfo.threads import one_thread
from gfo_llm.problem import LLMProblem
from problems.arithmetic import Arithmetic

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = "kill-llm-text"
GENERATIONS = 4  # held-out scores after generations 1 and 3 (eval_every 2, and the last)
SETTINGS = ["problem.dtype=fp32", "problem.max_new_tokens=6", "problem.batch_size=2", "problem.eval_limit=2",
            "problem.eval_every=2", "problem.rank=2", "problem.train_size=12", "problem.test_size=4",
            "algo.popsize=4"]  # fmt: skip
PAUSE = "GFO_KILL_TEST_PAUSE"  # where the test problem stops itself: "generation 2", "heldout 1", "export"
MARKS = "GFO_KILL_TEST_MARKS"  # the file it notes each phase in: "<pid> <phase>"
pytestmark = pytest.mark.usefixtures("no_plots")  # the in-process reference skips curve.png


# ---------------------------------------------------------------- the test problem (a plug-in)


class TextTask(Arithmetic):
    """Arithmetic prompts rewarded by a hash of the completion's text: a random model scores 0 on
    real tasks, and a resume is only worth comparing where candidates differ."""

    name: ClassVar[str] = PROBLEM

    def reward(self, completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
        return [sum(map(ord, text)) % 101 / 100 for text in completions]


class PausingProblem(LLMProblem):
    """The LLM problem of `TextTask`, noting its phases in `$GFO_KILL_TEST_MARKS` and stopping itself
    (SIGSTOP) in the phase `$GFO_KILL_TEST_PAUSE` names: in a generation or a held-out evaluation
    after decoding, at the first reward; in the export before the adapter is written. Without the
    variables it is `LLMProblem.for_task(TextTask)`."""

    task_class = TextTask
    Config = TextTask.Config

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._phase = ""
        self._generation = -1  # the last generation evaluated; -1: the initial centre's held-out score

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        self._generation = context.generation
        self._enter(f"generation {context.generation}")
        return super().evaluate(population, context)

    def evaluate_heldout(self, solutions: torch.Tensor) -> torch.Tensor | Evaluation:
        self._enter(f"heldout {self._generation}")
        return super().evaluate_heldout(solutions)

    def rewards(self, completions: Sequence[str], examples: Sequence[Any], where: str) -> list[float]:
        if self._phase:
            self._pause_if_asked(self._phase)
            self._phase = ""
        return super().rewards(completions, examples, where)

    def export(self, solution: torch.Tensor, run_dir: Path) -> Path | None:
        self._enter("export")
        self._pause_if_asked("export")
        return super().export(solution, run_dir)

    def _enter(self, phase: str) -> None:
        self._phase = phase
        _note(phase)

    def _pause_if_asked(self, phase: str) -> None:
        if os.environ.get(PAUSE) == phase:
            _note(f"paused {phase}")
            os.kill(os.getpid(), signal.SIGSTOP)  # the test kills it here


def _note(line: str) -> None:
    if os.environ.get(MARKS):
        with open(os.environ[MARKS], "a") as fh:
            fh.write(f"{os.getpid()} {line}\n")


# ---------------------------------------------------------------- running it


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PYTHONPATH under which `gfo` finds the test problem through its `gfo.problems` entry point."""
    site = tmp_path_factory.mktemp("plugin")
    info = site / "gfo_kill_test-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gfo-kill-test\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[gfo.problems]\n{PROBLEM} = {__name__}:PausingProblem\n")
    return os.pathsep.join([str(site), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])


class Run:
    """One `gfo run` process of the test problem, with its log and its phase marks."""

    def __init__(self, out: Path, args: list[str], plugin_path: str, pause: str = "", **popen: Any) -> None:
        self.out, self.marks = out, out.parent / f"{out.name}.marks"
        self.log = out.parent / f"{out.name}.log"
        env = {**os.environ, "PYTHONPATH": plugin_path, "OMP_NUM_THREADS": "1", MARKS: str(self.marks)}
        env.pop(PAUSE, None)
        if pause:
            env[PAUSE] = pause
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gfo.cli", "run", *args, "--quiet"],
                cwd=ROOT,
                stdout=fh,
                stderr=fh,
                env=env,
                **popen,
            )

    def wait_for_mark(self, line: str, count: int = 1, timeout: float = 1200) -> list[int]:
        """Wait until `count` processes noted `line`; returns their pids."""
        deadline = time.monotonic() + timeout
        while len(pids := self.noted(line)) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"gfo run exited {self.proc.returncode} before {line!r}:\n{self.text()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"no {line!r} after {timeout} s:\n{self.text()}")
            time.sleep(0.02)
        return pids

    def noted(self, line: str) -> list[int]:
        text = self.marks.read_text() if self.marks.exists() else ""
        return [int(pid) for pid, _, rest in (m.partition(" ") for m in text.splitlines()) if rest == line]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=60) == -signal.SIGKILL

    def finish(self, timeout: float = 1800) -> int:
        return self.proc.wait(timeout=timeout)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def start_args(out: Path, model_dir: Path, *extra: str) -> list[str]:
    sets = [f"problem.model={model_dir}", *SETTINGS]
    return ["--algo", "sep-cmaes", "--problem", PROBLEM, "--generations", str(GENERATIONS), "--out", str(out),
            *[arg for s in sets for arg in ("--set", s)], *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run never stopped, in process (one torch thread, as the subprocesses have)."""
    if PROBLEM not in PROBLEMS.names():
        PROBLEMS.register(PROBLEM, PausingProblem)
    out = tmp_path_factory.mktemp("reference") / "run"
    overrides = [f"problem.model={tiny_model_dir}", *SETTINGS, f"run.generations={GENERATIONS}"]
    grad = torch.is_grad_enabled()
    try:
        with one_thread():
            loop.prepare_run_dir(out, resume=False, force=False)
            loop.run(resolve("sep-cmaes", PROBLEM, overrides=["run.progress=false", *overrides]), out)
    finally:
        torch.set_grad_enabled(grad)  # LLMProblem.prepare turns autograd off process-wide
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len({r["best"] for r in rows}) > 1, "candidates never differed: a weak check"
    assert [g for g, r in enumerate(rows) if "heldout" in r] == [1, 3]
    return out


def assert_same_run(reference: Path, out: Path) -> None:
    """Everything but timings equals the uninterrupted run, and no temporary file is left behind."""
    assert_same_results(reference, out)  # metrics.jsonl, best.safetensors, checkpoint, summary.json
    assert (out / "samples.jsonl").read_bytes() == (reference / "samples.jsonl").read_bytes()
    files = sorted(p.name for p in (reference / "adapter").iterdir())
    assert sorted(p.name for p in (out / "adapter").iterdir()) == files
    for name in files:
        assert (out / "adapter" / name).read_bytes() == (reference / "adapter" / name).read_bytes(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def resume(out: Path, plugin_path: str) -> None:
    """`gfo run --resume OUT`, to the end."""
    run = Run(out, ["--resume", str(out)], plugin_path)
    assert run.finish() == 0, run.text()


# ---------------------------------------------------------------- SIGKILL


def test_sigkill_during_a_generation_then_resume_is_identical(
    reference: Path, tiny_model_dir: Path, plugin_path: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run = Run(out, start_args(out, tiny_model_dir), plugin_path, pause="generation 2")
    run.wait_for_mark("paused generation 2")
    run.kill()
    assert complete_lines(out) == checkpoint_generation(out) == 2  # nothing of generation 2 is kept
    resume(out, plugin_path)
    assert_same_run(reference, out)


#: Kill points reached by the test problem's pause, and what each leaves in the run directory:
#: generations in metrics.jsonl, the checkpoint's generation (None: no checkpoint yet).
PAUSED = {
    "initial held-out evaluation": ("heldout -1", 0, None),  # before the first checkpoint
    "held-out evaluation": ("heldout 1", 1, 1),  # generation 1 is evaluated, not yet logged
    "adapter export": ("export", GENERATIONS, GENERATIONS),  # after best.safetensors, before summary.json
}


@pytest.mark.slow
@pytest.mark.parametrize("point", PAUSED)
def test_sigkill_in_each_phase_then_resume_is_identical(
    point: str, reference: Path, tiny_model_dir: Path, plugin_path: str, tmp_path: Path
) -> None:
    pause, lines, done = PAUSED[point]
    out = tmp_path / "run"
    run = Run(out, start_args(out, tiny_model_dir), plugin_path, pause=pause)
    run.wait_for_mark(f"paused {pause}")
    run.kill()
    assert complete_lines(out) == lines
    assert (checkpoint_generation(out) if checkpoint.exists(out) else None) == done
    assert not (out / "summary.json").exists()
    if pause == "export":
        # A kill inside `save_peft_adapter` leaves its temporary folder half written, as here.
        partial = out / ".adapter.k1ll3d00"
        partial.mkdir()
        (partial / "adapter_config.json").write_text('{\n  "alpha_pattern": {},\n  "auto_m')
    resume(out, plugin_path)
    assert_same_run(reference, out)


@pytest.mark.slow
def test_sigkill_during_the_checkpoint_write_then_resume_is_identical(
    reference: Path, tiny_model_dir: Path, plugin_path: str, tmp_path: Path
) -> None:
    """The temporary file `checkpoint.atomic_write` opens is a pipe of one page: the writer blocks in
    `write()` with 4096 bytes of generation 2's checkpoint written, after `checkpoint.save` has
    renamed checkpoint.pt to checkpoint.prev.pt, and is killed there."""
    out = tmp_path / "run"
    run = Run(out, start_args(out, tiny_model_dir), plugin_path, pause="generation 2")
    run.wait_for_mark("paused generation 2")
    pipe = out / f".{checkpoint.NAME}.tmp{run.proc.pid}"
    os.mkfifo(pipe)
    fd = os.open(pipe, os.O_RDWR | os.O_NONBLOCK)  # a reader, so the writer's open does not block
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 4096)
        run.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 1200
        while _unread(fd) < 4096:  # the pipe is full: the writer is blocked in the middle of the file
            assert run.proc.poll() is None and time.monotonic() < deadline, run.text()
            select.select([fd], [], [], 0.05)
        run.kill()
    finally:
        os.close(fd)
    assert not (out / checkpoint.NAME).exists()
    assert complete_lines(out) == 3 and checkpoint_generation(out) == 2  # from checkpoint.prev.pt
    resume(out, plugin_path)
    assert_same_run(reference, out)


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe `fd`."""
    buffer = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buffer)
    return int.from_bytes(buffer, sys.byteorder)


# ---------------------------------------------------------------- Ctrl-C on Ray actors


#: Where both actors are when Ctrl-C comes, and the generations the stopped run has checkpointed.
CTRL_C = {"generation": ("generation 2", 3), "held-out evaluation": ("heldout 1", 2)}


@pytest.mark.slow
@pytest.mark.parametrize("point", CTRL_C)
def test_ctrl_c_on_two_ray_actors_stops_cleanly_and_resumes_identically(
    point: str, reference: Path, tiny_model_dir: Path, plugin_path: str, tmp_path: Path
) -> None:
    """SIGINT to the process group, as a terminal's Ctrl-C sends it (Ray's processes get it too),
    while both actors are paused inside generation 2 or the held-out evaluation of generation 1;
    then they go on. Exit 130 with the resume hint and no traceback, the generation in flight
    finished (its held-out evaluation too) and checkpointed, no process left, and the resume is
    exact."""
    pytest.importorskip("ray")
    pause, done = CTRL_C[point]
    out = tmp_path / "run"
    args = start_args(out, tiny_model_dir, "--actors", "2")
    run = Run(out, args, plugin_path, pause=pause, start_new_session=True)
    actors = run.wait_for_mark(f"paused {pause}", count=2)
    os.killpg(run.proc.pid, signal.SIGINT)
    for pid in actors:
        os.kill(pid, signal.SIGCONT)
    code = run.finish(timeout=600)
    log = run.text()
    assert code == 130, log
    assert "Traceback" not in log, log
    assert "SIGINT received: stopping after this generation" in log
    assert f"stopped; checkpoint saved. Resume with: gfo run --resume {out}\n" in log, log
    assert checkpoint_generation(out) == complete_lines(out) == done
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "SIGINT" and summary["generations"] == done
    # generation 2 had no held-out scores: the stop scored it, into the summary only
    assert (summary["heldout_final"] or {}).get("generation") == (2 if point == "generation" else None)
    assert not _session_processes(run.proc.pid), "processes of the stopped run are still alive"
    resume(out, plugin_path)
    assert_same_run(reference, out)


def _session_processes(sid: int) -> list[int]:
    """Processes of session `sid` (the stopped run and whatever it started), zombies aside."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            alive.append(int(stat.parent.name))
    return alive
