"""`gfo bench`: a small real grid on the 5-d sphere; the table must say what the run folders say."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gfo import bench, cli
from gfo.errors import GfoError
from gfo.loop import run
from gfo.problem import Context, Evaluation
from gfo.registry import PROBLEMS
from problems.functions import Sphere

SMALL = ["problem.dim=5"]


class Flaky(Sphere):
    """A sphere whose seed-1 runs crash: a failed run must not stop the others."""

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        if context.seed == 1:
            raise RuntimeError("simulated crash")
        return super().evaluate(population, context)


def quiet(_: str) -> None:
    pass


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("bench")
    runs = bench.plan(["pgpe", "cmaes"], "sphere", seeds=2, out=out, overrides=SMALL, budget_evals=160)
    bench.run_all(runs, log=quiet)
    result = bench.report(runs, out, target=1.0, budget="160 evaluations")
    return runs, out, result


def test_results_csv_agrees_with_every_summary_json(grid) -> None:
    runs, out, _ = grid
    rows = read_csv(out / "results.csv")
    assert [(r["algo"], int(r["seed"])) for r in rows] == [(r.algo, r.seed) for r in runs]
    for row in rows:
        run_dir = out / row["algo"] / f"seed-{row['seed']}"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert row["status"] == "ok"
        assert float(row["best"]) == summary["best"]
        assert int(row["evaluations"]) == summary["evaluations"]
        assert int(row["generations"]) == summary["generations"]
        assert float(row["wall_s"]) == summary["wall_s"]
        assert row["stop_reason"] == summary["stop_reason"] == "max_evaluations"
        assert 160 <= summary["evaluations"] < 160 + 40  # the budget, overshot by less than one population
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        first_hit = next((r["evaluations"] for r in records if r["best_so_far"] <= 1.0), None)
        assert (int(row["evals_to_target"]) if row["evals_to_target"] else None) == first_hit


def test_summary_ranks_by_median_and_plots(grid) -> None:
    _, out, result = grid
    rows = read_csv(out / "results.csv")
    medians = {
        a: statistics.median(float(r["best"]) for r in rows if r["algo"] == a) for a in ("pgpe", "cmaes")
    }
    ranked = sorted(medians, key=medians.get)  # type: ignore[arg-type]
    assert [s.algo for s in result.table] == ranked
    for s in result.table:
        assert s.median == pytest.approx(medians[s.algo])
        assert s.q1 <= s.median <= s.q3
    text = (out / "summary.md").read_text()
    assert text.index(f"| 1 | {ranked[0]} |") < text.index(f"| 2 | {ranked[1]} |")
    png = (out / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_rerun_skips_completed_and_resumes_interrupted(grid) -> None:
    runs, _, _ = grid
    logs: list[str] = []
    bench.run_all(runs, log=logs.append)
    assert all("skipped" in line for line in logs)
    # Interrupt one run part-way: its checkpoint stays, summary.json is never written.
    victim = runs[0]
    finished = json.loads((victim.run_dir / "summary.json").read_text())

    class Stop(Exception):
        pass

    class StopAt:
        def on_start(self, *args: object) -> None: ...

        def on_end(self, summary: object) -> None: ...

        def on_generation(self, record: dict) -> None:
            if record["generation"] == 2:
                raise Stop

    (victim.run_dir / "summary.json").unlink()
    from gfo.loop import prepare_run_dir

    prepare_run_dir(victim.run_dir, resume=False, force=True)
    with pytest.raises(Stop):
        run(victim.spec, victim.run_dir, callbacks=[StopAt()])  # type: ignore[list-item]
    logs.clear()
    bench.run_all(runs, log=logs.append)
    assert "resumed" in logs[0] and all("skipped" in line for line in logs[1:])
    resumed = json.loads((victim.run_dir / "summary.json").read_text())
    assert resumed["best"] == finished["best"] and resumed["evaluations"] == finished["evaluations"]


def test_a_failed_run_is_reported_and_the_others_finish(tmp_path: Path) -> None:
    if "test-flaky" not in PROBLEMS.names():  # registered here, not at import: other suites list problems
        PROBLEMS.register("test-flaky", Flaky)
    runs = bench.plan(["pgpe"], "test-flaky", seeds=2, out=tmp_path, overrides=SMALL, generations=3)
    bench.run_all(runs, log=quiet)
    result = bench.report(runs, tmp_path)
    rows = {r["seed"]: r for r in read_csv(tmp_path / "results.csv")}
    assert rows["0"]["status"] == "ok" and rows["0"]["best"]
    assert rows["1"]["status"] == "failed" and "simulated crash" in rows["1"]["error"]
    assert result.table[0].ok == 1 and result.table[0].runs == 2


def test_bad_plans_fail_before_anything_runs(tmp_path: Path, grid) -> None:
    with pytest.raises(GfoError, match="did you mean 'cmaes'"):
        bench.parse_algos("pgpe,cmaess")
    with pytest.raises(GfoError, match="seeds"):
        bench.plan(["pgpe"], "sphere", seeds=0, out=tmp_path)
    with pytest.raises(GfoError, match="one budget"):
        bench.plan(["pgpe"], "sphere", seeds=1, out=tmp_path, budget_evals=10, generations=3)
    _, out, _ = grid  # the same folder with another budget would mix two experiments
    with pytest.raises(GfoError, match="other settings"):
        bench.plan(["pgpe"], "sphere", seeds=1, out=out, overrides=SMALL, budget_evals=500)
    assert not list(tmp_path.iterdir())


def test_cli_bad_inputs_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "b"
    for args, message in (
        (["--algos", "pgpe,nope"], "unknown algorithm 'nope'"),
        (["--algos", "pgpe", "--seeds", "0"], "--seeds must be >= 1"),
        (["--algos", "pgpe", "--budget-evals", "100", "--generations", "5"], "one budget"),
        (["--algos", "pgpe", "--set", "algo.sigma=1"], "unknown key algo.sigma"),
    ):
        monkeypatch.setattr(sys, "argv", ["gfo", "bench", "--problem", "sphere", "--out", str(out), *args])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err, (args, err)
    assert not out.exists()  # checked before anything ran


def test_cli_bench_runs_the_grid(tmp_path: Path) -> None:
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "gfo.cli", "bench", "--algos", "cem,sep-cmaes", "--problem", "sphere"]
    cmd += ["--seeds", "1", "--generations", "4", "--set", "problem.dim=5", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = read_csv(out / "results.csv")
    assert [(r["algo"], r["status"]) for r in rows] == [("cem", "ok"), ("sep-cmaes", "ok")]
    assert {int(r["generations"]) for r in rows} == {4}
    assert "ranked by median final best" in done.stdout
    assert (out / "summary.md").exists() and (out / "curves.png").exists()


def _grpo_module():
    from gfo_llm import grpo

    return grpo


def test_grpo_reward_is_the_task_reward_and_counts_the_budget() -> None:
    grpo = _grpo_module()
    from problems.arithmetic import Arithmetic, ArithmeticConfig

    task = Arithmetic(ArithmeticConfig(train_size=10, test_size=10))
    examples = list(task.examples("train"))[:3]
    completions = [f"#### {examples[0]['target']}", "no idea", f"so #### {examples[2]['target'] + 1}"]
    reward = grpo.CountingReward(task)
    got = reward(
        ["p"] * 3, completions, completion_ids=[[1, 2], [3], [4, 5, 6]], trainer_state=None,
        **_columns(grpo.dataset_rows(examples, ["p"] * 3)),
    )  # fmt: skip
    assert got == task.reward(completions, examples) == [1.0, 0.0, 0.0]
    assert (reward.completions, reward.tokens) == (3, 6)
    with pytest.raises(SystemExit):  # argparse refuses a group of one completion
        grpo.parse_args(["--num-generations", "1"])


def _columns(rows: list[dict]) -> dict[str, list]:
    """The columns TRL passes a reward function: through a real `datasets.Dataset`, as in training."""
    from datasets import Dataset

    data = Dataset.from_list(rows)
    return {c: list(data[c]) for c in data.column_names if c != "prompt"}


def test_grpo_reward_reads_back_examples_with_different_nested_keys() -> None:
    """Instruct examples hold per-instruction kwargs with different keys; Arrow must not merge them."""
    grpo = _grpo_module()
    from problems.instruct import Instruct, InstructConfig

    task = Instruct(InstructConfig(train_size=40, test_size=10))
    examples = list(task.examples("train"))[:12]
    assert len({tuple(sorted(k for kw in ex["kwargs"] for k in kw)) for ex in examples}) > 1
    completions = [task.reference(ex) for ex in examples]
    got = grpo.CountingReward(task)(
        ["p"] * 12,
        completions,
        completion_ids=[[1]] * 12,
        **_columns(grpo.dataset_rows(examples, ["p"] * 12)),
    )
    assert got == task.reward(completions, examples) == [1.0] * 12


@pytest.mark.slow
def test_grpo_baseline_runs_on_the_bundled_model(tmp_path: Path) -> None:
    """Real SmolLM2, two tiny GRPO steps: the budget is spent exactly and the adapter evaluates."""
    grpo = _grpo_module()
    args = ["--completions", "8", "--num-generations", "2", "--prompts-per-step", "2", "--threads", "1"]
    args += ["--set", "problem.eval_limit=2", "--set", "problem.max_new_tokens=8", "--out", str(tmp_path)]
    result = grpo.main(args)
    assert result["completions_generated"] == 8 and result["steps"] == 2
    assert 8 <= result["tokens_generated"] <= 8 * 8
    assert result["heldout_items"] == 2 and 0.0 <= result["heldout_accuracy_after"] <= 1.0
    assert (
        json.loads((tmp_path / "result.json").read_text())["tokens_generated"] == result["tokens_generated"]
    )
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
