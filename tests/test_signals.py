"""Signals: SIGINT/SIGTERM stop a real `gfo run` at the next safe point with a checkpoint, a
resume hint and exit code 130/143; a second Ctrl-C exits at once and leaves a resumable run."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from conftest import (
    KILLABLE,
    assert_same_results,
    checkpoint_generation,
    complete_lines,
    resume_here,
    start_run,
    wait_for_lines,
)

from gfo import loop, stops
from gfo.spec import resolve

pytestmark = pytest.mark.usefixtures("no_plots")
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def log_of(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text()


def reference(tmp_path: Path, generations: int, *overrides: str) -> Path:
    ref = tmp_path / f"reference-{generations}"
    spec = resolve("pgpe", "rosenbrock", overrides=[*overrides, f"run.generations={generations}"])
    loop.prepare_run_dir(ref, resume=False, force=False)
    loop.run(spec, ref)
    return ref


def test_sigint_and_sigterm_stop_at_a_safe_point_and_resume(tmp_path: Path) -> None:
    """Both signals on two concurrent runs (their start-up costs overlap)."""
    outs = {sig: tmp_path / sig.name for sig in EXIT}
    procs = {
        sig: start_run(out, "--algo", "pgpe", *KILLABLE, "--out", str(out), generations=100_000)
        for sig, out in outs.items()
    }
    for sig, proc in procs.items():
        wait_for_lines(proc, outs[sig], 3)
        proc.send_signal(sig)
    for sig, proc in procs.items():
        out = outs[sig]
        assert proc.wait(timeout=120) == EXIT[sig], log_of(out)
        log = log_of(out)
        assert "Traceback" not in log, log
        assert f"{sig.name} received: stopping after this generation" in log
        # the hint is one line that can be copied as it is
        assert f"stopped; checkpoint saved. Resume with: gfo run --resume {out}\n" in log, log
        # a safe point: the generation in flight was finished and checkpointed, nothing is lost
        assert checkpoint_generation(out) == complete_lines(out) >= 3
        # the results so far, marked as a stop (a resume rewrites them when the run ends)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["stop_reason"] == sig.name and summary["generations"] == complete_lines(out)
        assert (out / "best.safetensors").exists()
        assert f"results so far in {out}/summary.json\n" in log
    # Resume both (in process, as `gfo run --resume` does: test_resume resumes real processes)
    # and compare with a run never stopped.
    generations = max(checkpoint_generation(out) for out in outs.values()) + 3
    ref = reference(tmp_path, generations, "problem.dim=2000", "algo.popsize=20")
    for out in outs.values():
        resume_here(out, generations)
        assert_same_results(ref, out)


def test_second_signal_exits_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The handler itself: the first signal only asks for a stop, the second calls os._exit."""

    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(stops.os, "_exit", fake_exit)
    stop = stops.SignalStop()
    stop._handle(signal.SIGTERM, None)
    assert "SIGTERM received: stopping after this generation (again to quit now)" in capsys.readouterr().out
    with pytest.raises(loop.Interrupted) as info:
        stop.check(Path("somewhere"))
    assert info.value.exit_code == 143
    with pytest.raises(Exited) as exited:
        stop._handle(signal.SIGINT, None)
    assert exited.value.args == (130,)


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once_and_the_run_still_resumes(tmp_path: Path) -> None:
    """Generations of ~0.3 s: the second SIGINT lands inside one, long before its safe point."""
    out = tmp_path / "run"
    big = ["--problem", "rosenbrock", "--set", "problem.dim=200000", "--popsize", "20"]
    proc = start_run(out, "--algo", "pgpe", *big, "--out", str(out), generations=100_000)
    wait_for_lines(proc, out, 2)
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while "SIGINT received" not in log_of(out):  # the first one was handled: a stop is pending
        assert time.monotonic() < deadline and proc.poll() is None, log_of(out)
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    log = log_of(out)
    assert "Traceback" not in log, log
    assert "checkpoint saved" not in log, "the second Ctrl-C waited for the safe point"
    done = checkpoint_generation(out)  # intact (a torn file would warn, and warnings are errors there)
    assert complete_lines(out) - 1 <= done <= complete_lines(out)
    resume_here(out, done + 2)
    ref = reference(tmp_path, done + 2, "problem.dim=200000", "algo.popsize=20", "run.progress=false")
    assert_same_results(ref, out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_handler_is_restored_after_a_run(sig: signal.Signals, tmp_path: Path) -> None:
    before = signal.getsignal(sig)
    spec = resolve("cem", "sphere", overrides=["run.generations=2", "problem.dim=3"])
    loop.prepare_run_dir(tmp_path / "run", resume=False, force=False)
    loop.run(spec, tmp_path / "run")
    assert signal.getsignal(sig) is before


def test_in_process_stop_raises_interrupted_after_a_checkpoint(tmp_path: Path) -> None:
    """What the CLI turns into exit 130: `Interrupted` at the safe point after the current generation."""

    class SignalAtGeneration(loop.Callback):
        def on_generation(self, record: dict[str, object]) -> None:
            if record["generation"] == 2:
                signal.raise_signal(signal.SIGINT)

    out = tmp_path / "run"
    spec = resolve("snes", "sphere", overrides=["run.generations=10", "problem.dim=3"])
    loop.prepare_run_dir(out, resume=False, force=False)
    with pytest.raises(loop.Interrupted) as info:
        loop.run(spec, out, callbacks=[SignalAtGeneration()])
    assert info.value.exit_code == 130 and info.value.run_dir == out
    assert checkpoint_generation(out) == complete_lines(out) == 3
