"""The run record is right however the run ends: final held-out scores whatever stops the
run, strict JSON with honest statistics, and memory per generation."""

from __future__ import annotations

import json
import math
import signal
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import assert_same_results, every_written_file_is_strict_json, resume_here, rows_of, strict
from safetensors.torch import load_file

from gfo import checkpoint, loop
from gfo.problem import Context, Evaluation
from gfo.registry import PROBLEMS
from gfo.spec import resolve
from problems.functions import FunctionConfig, Sphere

pytestmark = pytest.mark.usefixtures("no_plots")
HELDOUT = "test-record-heldout-sphere"
POISONED = "test-record-poisoned-sphere"
EXPORTING = "test-record-exporting-sphere"


@dataclass(frozen=True)
class HeldoutConfig(FunctionConfig):
    eval_every: int = field(default=4, metadata={"help": "held-out evaluation every k generations"})


class HeldoutSphere(Sphere):
    """The sphere, with a shifted sphere as its held-out data: the two disagree on which is best."""

    Config: ClassVar[type] = HeldoutConfig

    def heldout_every(self) -> int:
        return int(self.config.eval_every)

    def evaluate_heldout(self, solutions: torch.Tensor) -> torch.Tensor:
        return self.f(solutions.double() - 0.5)


class PoisonedSphere(HeldoutSphere):
    """NaN, +inf and -inf for 3 of every 8 candidates, all NaN in generation 0, and a NaN held-out
    score for every other call; it keeps what it returned, so a test can redo the statistics."""

    returned: ClassVar[dict[int, list[float]]] = {}
    heldout_calls: ClassVar[int] = 0

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        f = self.f(population.double())
        if context.generation == 0:
            f[:] = math.nan
        slot = torch.arange(len(f)) % 8
        f[slot == 0], f[slot == 1], f[slot == 2] = math.nan, math.inf, -math.inf
        PoisonedSphere.returned[context.generation] = f.tolist()
        return Evaluation(fitness=f)

    def evaluate_heldout(self, solutions: torch.Tensor) -> torch.Tensor:
        PoisonedSphere.heldout_calls += 1
        scores = super().evaluate_heldout(solutions)
        return scores.fill_(math.nan) if PoisonedSphere.heldout_calls % 2 else scores


class ExportingSphere(HeldoutSphere):
    """Exports its solution to a folder whose name gfo does not know."""

    def export(self, solution: torch.Tensor, run_dir: Path) -> Path | None:
        folder = run_dir / "weights"
        folder.mkdir(exist_ok=True)
        (folder / "solution.txt").write_text(" ".join(map(str, solution.tolist())))
        return folder


@pytest.fixture(scope="module", autouse=True)
def _register() -> None:
    for name, cls in ((HELDOUT, HeldoutSphere), (POISONED, PoisonedSphere), (EXPORTING, ExportingSphere)):
        if name not in PROBLEMS.names():
            PROBLEMS.register(name, cls)


def run_here(out: Path, *overrides: str, problem: str = HELDOUT, callbacks: Any = None) -> dict[str, Any]:
    spec = resolve(
        "pgpe", problem, overrides=["problem.dim=4", "algo.popsize=4", "run.progress=false", *overrides]
    )
    loop.prepare_run_dir(out, resume=False, force=False)
    return loop.run(spec, out, callbacks=callbacks)


def check_heldout_record(out: Path, summary: dict[str, Any]) -> None:
    """The summary's held-out best is the best of every held-out score the run made, and the
    selected solution is the one that scored it."""
    rows = rows_of(out)
    scores = [summary["heldout_initial"], *(v for r in rows if "heldout" in r for v in r["heldout"].values())]
    if summary["heldout_final"]:
        scores += [summary["heldout_final"]["center"], summary["heldout_final"]["best"]]
    assert summary["heldout_best"] == min(scores)
    selected = load_file(out / "best.safetensors")["selected"].double()
    assert float(HeldoutSphere.f(selected[None] - 0.5)[0]) == pytest.approx(summary["heldout_best"], rel=1e-6)


# ---------------------------------------------------------------- 1. whatever ends the run


@pytest.mark.parametrize("end", ["generations", "max_evaluations", "target"])
def test_every_end_scores_the_last_generation_on_heldout_data(end: str, tmp_path: Path) -> None:
    """`run.generations`, `run.max_evaluations` and `run.target` alike: the generation the run ends
    with carries held-out scores (eval_every = 4, and none of these ends on a multiple of 4)."""
    if end == "generations":
        overrides, last = ["run.generations=7"], 6
    elif end == "max_evaluations":
        overrides, last = ["run.generations=100", "run.max_evaluations=22"], 5  # 6 x 4 >= 22
    else:  # the best-so-far of the same search (same seed, same candidates) when it first improves
        run_here(tmp_path / "reference", "run.generations=12")
        so_far = [r["best_so_far"] for r in rows_of(tmp_path / "reference")]
        last = next(g for g in range(1, 12) if so_far[g] < so_far[g - 1] and g % 4 != 3)
        overrides = ["run.generations=100", f"run.target={so_far[last]}"]
    summary = run_here(tmp_path / "run", *overrides)
    rows = rows_of(tmp_path / "run")
    assert summary["stop_reason"] == end and rows[-1]["generation"] == last
    assert "heldout" in rows[-1], f"the run ended by {end} without scoring its last generation"
    check_heldout_record(tmp_path / "run", summary)
    assert summary["heldout_final"] is None  # everything is in metrics.jsonl


class RaiseSignal(loop.Callback):
    """A real SIGINT while generation `generation` is being logged (the handler sees it at once)."""

    def __init__(self, generation: int) -> None:
        self.generation = generation

    def on_generation(self, record: dict[str, Any]) -> None:
        if record["generation"] == self.generation:
            signal.raise_signal(signal.SIGINT)


def test_a_signal_stop_scores_the_last_generation_and_still_resumes_exactly(tmp_path: Path) -> None:
    reference, out = tmp_path / "reference", tmp_path / "run"
    run_here(reference, "run.generations=12")
    with pytest.raises(loop.Interrupted) as info:
        run_here(out, "run.generations=12", callbacks=[RaiseSignal(5)])
    assert info.value.exit_code == 130
    # Results so far: generation 5 (no multiple of 4) was scored, into the summary and the selection.
    summary = strict((out / "summary.json").read_text())
    assert summary["stop_reason"] == "SIGINT" and summary["generations"] == 6
    final = summary["heldout_final"]
    assert final is not None and final["generation"] == 5, summary
    check_heldout_record(out, summary)
    assert (out / "best.safetensors").exists()
    # ... but not into the checkpoint or metrics.jsonl: the resume goes on as if never stopped.
    saved = checkpoint.load(out)["loop"]
    assert saved["generation"] == 6 and saved["last_candidate"] is not None
    assert "heldout" not in rows_of(out)[-1]
    resume_here(out, 12)
    assert_same_results(reference, out)
    assert strict((out / "summary.json").read_text())["heldout_final"] is None


# ---------------------------------------------------------------- 3. strict JSON, honest statistics


def test_every_file_is_strict_json_and_statistics_use_finite_values_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    PoisonedSphere.returned.clear()
    PoisonedSphere.heldout_calls = 0
    with pytest.warns(UserWarning, match="non-finite fitness"):
        summary = run_here(out, "run.generations=6", "algo.popsize=16", problem=POISONED)
    assert every_written_file_is_strict_json(out) >= 2  # metrics.jsonl, summary.json
    rows = rows_of(out)
    first = rows[0]  # all NaN: nothing to summarize, and it says so
    assert [first[k] for k in ("best", "mean", "median", "worst", "best_so_far")] == [None] * 5
    assert (first["finite"], first["nonfinite"]) == (0, 16)
    for row in rows[1:]:
        values = PoisonedSphere.returned[row["generation"]]
        finite = [v for v in values if math.isfinite(v)]
        assert (row["finite"], row["nonfinite"]) == (len(finite), 6) == (10, 6)
        assert row["best"] == min(finite) and row["worst"] == max(finite)
        assert row["mean"] == statistics.fmean(finite) and row["median"] == statistics.median(finite)
    assert summary["nonfinite"] == rows[-1]["nonfinite_total"] == 16 + 5 * 6
    # A NaN held-out score is null where it is logged, and never the held-out best.
    assert any(v is None for r in rows if "heldout" in r for v in r["heldout"].values())
    assert math.isfinite(summary["heldout_best"])


# ---------------------------------------------------------------- 9. memory


def test_every_generation_records_its_memory(tmp_path: Path) -> None:
    run_here(tmp_path / "run", "run.generations=3")
    for row in rows_of(tmp_path / "run"):
        assert 0 < row["rss_mb"] <= row["peak_rss_mb"], row


def test_a_long_llm_run_does_not_grow(
    tiny_model_dir: Path, tmp_path: Path, torch_single_thread: None
) -> None:
    """100 generations of the tiny model (held-out scores and samples included): the memory after
    the last is within 1.2x of that after generation 10, so nothing is kept per generation."""
    enabled = torch.is_grad_enabled()
    try:
        spec = resolve(
            "sep-cmaes",
            "arithmetic",
            overrides=[
                f"problem.model={tiny_model_dir}", "problem.dtype=fp32", "problem.max_new_tokens=2",
                "problem.batch_size=1", "problem.eval_every=10", "problem.eval_limit=2", "problem.rank=1",
                "problem.train_size=20", "problem.test_size=2", "algo.popsize=2", "run.generations=100",
                "run.progress=false",
            ],
        )  # fmt: skip
        loop.prepare_run_dir(tmp_path / "run", resume=False, force=False)
        loop.run(spec, tmp_path / "run")
    finally:
        torch.set_grad_enabled(enabled)  # LLMProblem.prepare turns autograd off process-wide
    rows = rows_of(tmp_path / "run")
    assert len(rows) == 100
    for key in ("rss_mb", "peak_rss_mb"):
        assert rows[-1][key] <= 1.2 * rows[10][key], (key, rows[10][key], rows[-1][key])


def test_select_center_exports_the_final_centre_and_leaves_the_search_as_it_was(tmp_path: Path) -> None:
    """`run.select=center`: the export is the search's final centre, not the held-out best (which a
    small selection set picks by chance); the search itself is the same."""

    class Grab(loop.Callback):
        def on_start(self, spec: Any, problem: Any, algorithm: Any, start_generation: int) -> None:
            self.algorithm = algorithm

    grab = Grab()
    by_heldout = run_here(tmp_path / "heldout", "run.generations=6")
    by_center = run_here(tmp_path / "center", "run.generations=6", "run.select=center", callbacks=[grab])
    assert (by_heldout["selected_by"], by_center["selected_by"]) == ("heldout", "center")
    steady = [
        [{k: v for k, v in r.items() if k not in loop.VOLATILE} for r in rows_of(tmp_path / d)]
        for d in ("center", "heldout")
    ]
    assert steady[0] == steady[1]
    selected = load_file(tmp_path / "center" / "best.safetensors")["selected"]
    assert torch.equal(selected, grab.algorithm.center().float())
    held = load_file(tmp_path / "heldout" / "best.safetensors")["selected"]
    assert not torch.equal(selected, held)


# ---------------------------------------------------------------- --force


class FailAt(loop.Callback):
    """Fails the run after `generation`: the checkpoint is saved, no summary.json is written."""

    def __init__(self, generation: int) -> None:
        self.generation = generation

    def on_generation(self, record: dict[str, Any]) -> None:
        if record["generation"] == self.generation:
            raise RuntimeError("stopped by the test")


def add_tracker_and_user_files(out: Path) -> None:
    for folder in ("tb", "report", "adapter", "mine"):  # "adapter": a name gfo/ does not know
        (out / folder).mkdir()
        (out / folder / "file").write_text("x")
    for name in ("tracking.json", "report.html", "notes.txt"):
        (out / name).write_text("x")


def test_force_removes_what_the_run_exported_and_gfo_files_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = run_here(out, "run.generations=2", problem=EXPORTING)
    assert summary["exported"] == "weights" and (out / "weights" / "solution.txt").is_file()
    add_tracker_and_user_files(out)
    loop.prepare_run_dir(out, resume=False, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "mine", "notes.txt"]


def test_force_after_a_run_stopped_before_its_summary_clears_its_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stopped by the test"):
        run_here(out, "run.generations=4", problem=EXPORTING, callbacks=[FailAt(1)])
    assert checkpoint.exists(out) and not (out / "summary.json").exists()
    assert not (out / "weights").exists()  # only the end of a run exports
    add_tracker_and_user_files(out)
    loop.prepare_run_dir(out, resume=False, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "mine", "notes.txt"]


def test_force_after_a_resume_stopped_before_its_summary_removes_the_earlier_export(tmp_path: Path) -> None:
    """A resumed run that fails keeps the summary.json of the end it continued from, and its export."""
    out = tmp_path / "run"
    run_here(out, "run.generations=2", problem=EXPORTING)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        resume_here(out, generations=4, callbacks=[FailAt(2)])
    assert (out / "weights").is_dir()
    loop.prepare_run_dir(out, resume=False, force=True)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "recorded", ["..", "../outside", "OUTSIDE", "link", "link/keep.txt", ".", "", 7, None]
)
def test_force_never_removes_anything_outside_the_run_directory(tmp_path: Path, recorded: Any) -> None:
    """Whatever summary.json says was exported: a path leaving the run directory is not followed, a
    link to a folder outside is removed as the link."""
    out, outside = tmp_path / "run", tmp_path / "outside"
    run_here(out, "run.generations=1")
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (out / "mine.txt").write_text("x")
    (out / "link").symlink_to(outside, target_is_directory=True)
    recorded = str(outside) if recorded == "OUTSIDE" else recorded
    summary = (out / "summary.json").read_text()
    assert '"exported": null' in summary
    summary = summary.replace('"exported": null', f'"exported": {json.dumps(recorded)}')
    (out / "summary.json").write_text(summary)
    loop.prepare_run_dir(out, resume=False, force=True)
    assert (outside / "keep.txt").is_file()
    kept = sorted(p.name for p in out.iterdir())
    assert kept == (["mine.txt"] if recorded == "link" else ["link", "mine.txt"])
