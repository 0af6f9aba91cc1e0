"""Experiment tracking (`--track`): each tracker's own files, read back with the tracker's own reader,
hold every metric of every generation once, also across a stop or a SIGKILL and a resume.

Test functions keep these cheap; a sphere that also writes samples and exports an "adapter" stands
in for an LLM task where the samples and the artifact matter (tests/test_report.py tracks a real
tiny-model run). MLflow, W&B and Trackio tests are skipped, saying so, where the package is missing.
"""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from conftest import KILLABLE, checkpoint_generation, start_run, wait_for_lines

from gfo import cli, loop
from gfo.config import RunConfig
from gfo.errors import ConfigError
from gfo.problem import Context, Evaluation
from gfo.registry import PROBLEMS, TRACKERS
from gfo.spec import resolve
from gfo.tracking import STATE_FILE, Tracker, Tracking, scalars
from problems.functions import Sphere

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def no_plots() -> Any:
    """curve.png is no part of tracking and costs most of a small in-process run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("gfo.plots.plot_run", lambda run_dir: run_dir)
        yield


class TalkingSphere(Sphere):
    """A sphere with what an LLM task adds: sample records with text, and an exported directory."""

    name: ClassVar[str] = "talking-sphere"

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        result = super().evaluate(population, context)
        best = int(result.fitness.argmin())
        text = f"generation {context.generation}: x = {population[best, :2].tolist()}\nwith <markup> & more"
        result.samples = [
            {"prompt": "minimize the sphere", "completion": text, "fitness": float(result.fitness[best])}
        ]
        return result

    def export(self, solution: torch.Tensor, run_dir: Path) -> Path:
        out = run_dir / "adapter"
        out.mkdir(exist_ok=True)
        (out / "adapter_config.json").write_text(json.dumps({"dim": len(solution)}))
        (out / "solution.txt").write_text(" ".join(f"{v:.6g}" for v in solution.tolist()))
        return out


@pytest.fixture(scope="module")
def talking() -> str:
    if TalkingSphere.name not in PROBLEMS.names():
        PROBLEMS.register(TalkingSphere.name, TalkingSphere)
    return TalkingSphere.name


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_here(
    out: Path,
    track: str,
    generations: int,
    *,
    problem: str = "sphere",
    resume: bool = False,
    stop_at: int = -1,
) -> None:
    """`gfo run --track TRACK` in process; `stop_at`: stop there as a first Ctrl-C does."""
    overrides = [f"run.generations={generations}", f"run.track={track}", "problem.dim=4"]
    spec = resolve("pgpe", problem, overrides=overrides)
    loop.prepare_run_dir(out, resume=resume, force=False)
    callbacks: list[loop.Callback] = [Tracking(spec.run.track, out)]
    if stop_at >= 0:
        callbacks.append(StopAfter(stop_at, out))
    loop.run(spec, out, resume=resume, callbacks=callbacks)


class StopAfter(loop.Callback):
    def __init__(self, generation: int, out: Path) -> None:
        self.generation, self.out = generation, out

    def on_generation(self, record: dict[str, Any]) -> None:
        if record["generation"] == self.generation:
            raise loop.Interrupted(signal.SIGINT, self.out)


def expected(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as tracker series: tag -> [(generation, value)], in generation order."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records(run_dir):
        for key, value in scalars(record).items():
            series.setdefault(key, []).append((record["generation"], value))
    return series


# ---------------------------------------------------------------- settings and errors


def test_track_comes_from_toml_or_set_and_names_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('algorithm = "pgpe"\nproblem_name = "sphere"\n[run]\ntrack = ["tensorboard", "mlflow"]')
    spec = resolve(None, None, config_file=config)
    assert spec.run.track == ("tensorboard", "mlflow")
    assert 'track = [\n    "tensorboard",\n    "mlflow",\n]' in spec.to_toml(), spec.to_toml()
    assert resolve("pgpe", "sphere", overrides=["run.track=wandb,trackio"]).run.track == ("wandb", "trackio")
    assert "track" not in resolve("pgpe", "sphere").to_toml()  # an untracked run's config.toml is as before
    with pytest.raises(ConfigError, match="did you mean 'tensorboard'"):
        RunConfig(track=("tensorbord",))
    with pytest.raises(ConfigError, match="twice"):
        RunConfig(track=("mlflow", "mlflow"))


def test_scalars_flatten_nested_values_and_leave_gaps_for_non_finite() -> None:
    record = {"generation": 3, "best": 1.5, "heldout": {"center": 0.25, "best": None}, "ok": True, "n": 4}
    assert scalars(record) == {"best": 1.5, "heldout/center": 0.25, "n": 4.0}
    assert scalars({"mean": math.nan, "x": math.inf}) == {}


def test_a_missing_tracker_is_one_line_exit_2_before_the_search(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr(
        "gfo.tracking._base.importlib.util.find_spec", lambda n: None if n == "wandb" else real(n)
    )
    out = tmp_path / "run"
    argv = [
        "gfo",
        "run",
        "--algo",
        "pgpe",
        "--problem",
        "sphere",
        "--out",
        str(out),
        "--track",
        "tensorboard,wandb",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and "pip install 'gfo[wandb]'" in err, err
    assert not out.exists()  # nothing started


class Flaky(Tracker):
    """A plug-in tracker (`TRACKERS.register`) whose service goes away at generation 2."""

    package = "json"  # importable everywhere
    extra = "flaky"
    logged: ClassVar[list[int]] = []

    def open(self) -> int | None:
        return -1

    def where(self) -> str:
        return "flaky: nowhere"

    def log(self, generation: int, values: dict[str, float], samples: list[dict[str, Any]]) -> None:
        if generation == 2:
            raise ConnectionError("service gone")
        self.logged.append(generation)

    def finish(self, summary: dict[str, Any], artifact: Path | None) -> None:
        self.logged.append(-1)  # a dropped tracker is not finished


def test_a_tracker_failing_mid_run_is_dropped_and_the_search_goes_on(tmp_path: Path) -> None:
    if "flaky" not in TRACKERS.names():
        TRACKERS.register("flaky", Flaky)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="--track flaky stopped at generation 2: ConnectionError"):
        run_here(out, "flaky", 5)
    assert Flaky.logged == [0, 1] and len(records(out)) == 5 and (out / "summary.json").exists()


# ---------------------------------------------------------------- TensorBoard


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'gfo[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_tensorboard_matches(run_dir: Path) -> None:
    """Every tag, every generation, once, with metrics.jsonl's value (float32, as events store it)."""
    want, got = expected(run_dir), tensorboard_scalars(run_dir)
    assert set(got) == set(want), set(got) ^ set(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [g for g, _ in points], tag
        assert np.array_equal(np.float32([v for _, v in got[tag]]), np.float32([v for _, v in points])), tag


def test_tensorboard_holds_every_scalar_hparams_and_samples(talking: str, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'gfo[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_here(out, "tensorboard", 6, problem=talking)
    assert_tensorboard_matches(out)
    assert {"best", "mean", "worst", "best_so_far", "stepsize_mean", "evaluations", "wall_s"} <= set(
        expected(out)
    )
    events = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    tensors = set(events.Tags()["tensors"])
    assert {"samples/text_summary", "config/text_summary", "summary/text_summary"} <= tensors
    texts = events.Tensors("samples/text_summary")
    assert [t.step for t in texts] == list(range(6))
    assert b"with <markup> & more" in texts[-1].tensor_proto.string_val[0]
    # the HParams dashboard's session record, with the settings
    hparams = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"algo.stdev_learning_rate" in hparams and b"problem.dim" in hparams


def test_tensorboard_after_a_stop_and_a_lagging_state_file_has_no_duplicates(tmp_path: Path) -> None:
    """A stop at generation 3, then the state file set back as if a kill had come between writing
    events and recording them: the resumed writer purges what it then writes again."""
    out = tmp_path / "run"
    with pytest.raises(loop.Interrupted):
        run_here(out, "tensorboard", 9, stop_at=3)
    state = json.loads((out / STATE_FILE).read_text())
    assert state["tensorboard"]["last"] == 3
    state["tensorboard"]["last"] = 1
    (out / STATE_FILE).write_text(json.dumps(state))
    run_here(out, "tensorboard", 9, resume=True)
    assert len(records(out)) == 9
    assert_tensorboard_matches(out)


def test_sigkill_and_resume_leave_every_tensorboard_scalar_once(tmp_path: Path) -> None:
    """A real `gfo run --track tensorboard` killed twice at random moments and resumed each time."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'gfo[tensorboard]')")
    out = tmp_path / "killed"
    args = ["--algo", "pgpe", *KILLABLE, "--track", "tensorboard"]
    proc = start_run(out, *args, "--out", str(out), generations=100_000)
    rng = np.random.default_rng(3)
    done = 0
    for kill in range(2):
        wait_for_lines(proc, out, done + int(rng.integers(2, 6)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        done = checkpoint_generation(out)
        proc = start_run(out, "--resume", str(out), generations=100_000 if kill == 0 else done + 3)
    assert proc.wait(timeout=300) == 0, (out.parent / "killed.log").read_text()
    assert len(records(out)) == done + 3
    assert_tensorboard_matches(out)


# ---------------------------------------------------------------- MLflow


def mlflow_client(run_dir: Path) -> tuple[Any, str]:
    pytest.importorskip(
        "mlflow", reason="mlflow is not installed: its own extra, pip install 'gfo[mlflow]' (not in dev)"
    )
    from mlflow.tracking import MlflowClient

    state = json.loads((run_dir / STATE_FILE).read_text())["mlflow"]
    assert state["tracking_uri"] == f"sqlite:///{run_dir.resolve() / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=state["tracking_uri"]), state["run_id"]


def assert_mlflow_matches(client: Any, run_id: str, run_dir: Path) -> None:
    for tag, points in expected(run_dir).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, tag))
        assert history == points, tag


def test_mlflow_store_holds_params_metric_histories_samples_and_the_adapter(
    talking: str, tmp_path: Path
) -> None:
    pytest.importorskip(
        "mlflow", reason="mlflow is not installed: its own extra, pip install 'gfo[mlflow]' (not in dev)"
    )
    import mlflow

    out = tmp_path / "run"
    with pytest.raises(loop.Interrupted):
        run_here(out, "mlflow", 7, problem=talking, stop_at=2)
    client, run_id = mlflow_client(out)
    assert client.get_run(run_id).info.status == "KILLED"
    run_here(out, "mlflow", 7, problem=talking, resume=True)
    client, same = mlflow_client(out)
    assert same == run_id  # the resume continued the tracked run

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["algorithm"] == "pgpe" and run.data.params["problem.dim"] == "4"
    assert run.data.params["popsize"] == str(records(out)[0]["evaluations"])
    assert_mlflow_matches(client, run_id, out)
    summary = json.loads((out / "summary.json").read_text())
    assert run.data.metrics["summary/best"] == summary["best"]

    adapter = {a.path for a in client.list_artifacts(run_id, "adapter")}
    assert adapter == {"adapter/adapter_config.json", "adapter/solution.txt"}
    local = Path(client.download_artifacts(run_id, "adapter/solution.txt", str(tmp_path)))
    assert local.read_text() == (out / "adapter" / "solution.txt").read_text()
    samples = sorted(a.path for a in client.list_artifacts(run_id, "samples"))
    assert samples == [f"samples/generation-{g:06d}.md" for g in range(7)]
    text = Path(client.download_artifacts(run_id, samples[-1], str(tmp_path))).read_text()
    assert "### generation 6" in text and "with <markup> & more" in text
    assert {a.path for a in client.list_artifacts(run_id)} >= {
        "config.toml",
        "summary.json",
        "adapter",
        "samples",
    }

    mlflow.set_tracking_uri(json.loads((out / STATE_FILE).read_text())["mlflow"]["tracking_uri"])
    try:
        found = mlflow.search_runs(experiment_names=["gfo"])
    finally:
        mlflow.set_tracking_uri(None)
    assert list(found["run_id"]) == [run_id]
    assert float(found["metrics.best_so_far"].iloc[0]) == records(out)[-1]["best_so_far"]


def test_tracking_added_on_resume_logs_the_earlier_generations_from_the_files(tmp_path: Path) -> None:
    pytest.importorskip(
        "mlflow", reason="mlflow is not installed: its own extra, pip install 'gfo[mlflow]' (not in dev)"
    )
    out = tmp_path / "run"
    overrides = ["run.generations=5", "problem.dim=4"]
    loop.prepare_run_dir(out, resume=False, force=False)
    loop.run(resolve("cmaes", "sphere", overrides=overrides), out)
    spec = resolve(
        "cmaes", "sphere", overrides=["run.generations=8", "problem.dim=4", "run.track=mlflow,tensorboard"]
    )
    loop.prepare_run_dir(out, resume=True, force=False)
    loop.run(spec, out, resume=True, callbacks=[Tracking(spec.run.track, out)])
    client, run_id = mlflow_client(out)
    assert_mlflow_matches(client, run_id, out)
    assert [m.step for m in client.get_metric_history(run_id, "best")] == list(range(8))
    assert_tensorboard_matches(out)


# ---------------------------------------------------------------- W&B and Trackio (offline, subprocess)


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No login anywhere: a fresh HOME, no W&B key or mode, Trackio's store under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    env.update(HOME=str(tmp_path / "home"), TRACKIO_DIR=str(tmp_path / "trackio"))
    return env


def gfo(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gfo.cli", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr


def wandb_history(path: Path) -> list[dict[str, Any]]:
    """The history rows of a `.wandb` file: a LevelDB-style log of W&B's protobuf records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    rows, pos, buffer, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left  # block trailer or padding
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buffer = chunk if kind in (1, 2) else buffer + chunk  # FULL or FIRST start a record
        if kind in (1, 4):  # FULL or LAST end it
            record = pb.Record()
            record.ParseFromString(buffer)
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                )
    return rows


def test_wandb_offline_writes_one_run_continued_by_the_resume(talking: str, tmp_path: Path) -> None:
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'gfo[wandb]')")
    out, env = tmp_path / "run", offline_env(tmp_path)
    common = ["--algo", "pgpe", "--problem", talking, "--set", "problem.dim=4", "--track", "wandb"]
    code = (
        f"import sys, runpy; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_tracking as t; "
    )
    code += "from gfo.registry import PROBLEMS; PROBLEMS.register(t.TalkingSphere.name, t.TalkingSphere); "
    code += "sys.argv = ['gfo', *sys.argv[1:]]; runpy.run_module('gfo.cli', run_name='__main__')"
    for args in (["--out", str(out), "--generations", "4"], ["--resume", str(out), "--generations", "7"]):
        proc = subprocess.run(
            [sys.executable, "-c", code, "run", *common, *args, "--quiet"],
            capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    run_id = json.loads((out / STATE_FILE).read_text())["wandb"]["id"]
    files = sorted((out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2  # one per process, one run id: `wandb sync` uploads them as one run
    rows = [row for f in files for row in wandb_history(f)]
    assert Counter(r["_step"] for r in rows) == Counter(range(7))
    want = expected(out)
    for row in rows:
        for tag, points in want.items():
            assert row[tag] == dict(points)[row["_step"]], (tag, row["_step"])
        assert row["samples/_type"] == "table-file"  # W&B flattens the table reference


def test_trackio_local_store_holds_every_step_once_across_a_resume(tmp_path: Path) -> None:
    pytest.importorskip("trackio", reason="trackio is not installed (pip install 'gfo[trackio]')")
    out, env = tmp_path / "run", offline_env(tmp_path)
    common = ["--algo", "pgpe", "--problem", "sphere", "--set", "problem.dim=4", "--track", "trackio"]
    gfo(env, "run", *common, "--out", str(out), "--generations", "4")
    gfo(env, "run", *common, "--resume", str(out), "--generations", "7")
    state = json.loads((out / STATE_FILE).read_text())["trackio"]
    assert (tmp_path / "trackio" / "gfo.db").exists()
    dump = (
        "import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
        f"print(json.dumps(S.get_logs({state['project']!r}, {state['name']!r})))"
    )
    logs = json.loads(
        subprocess.run(
            [sys.executable, "-c", dump], capture_output=True, text=True, env=env, check=True
        ).stdout
    )
    per_step = [row for row in logs if "best" in row]
    assert [row["step"] for row in per_step] == list(range(7))
    for tag, points in expected(out).items():
        assert [row[tag] for row in per_step] == [v for _, v in points], tag
    assert any("summary/best" in row for row in logs)


# ---------------------------------------------------------------- tune and bench: one tracked run each


def test_bench_and_tune_track_each_run_grouped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip(
        "mlflow", reason="mlflow is not installed: its own extra, pip install 'gfo[mlflow]' (not in dev)"
    )
    from mlflow.tracking import MlflowClient

    small = ["--problem", "sphere", "--set", "problem.dim=4", "--track", "mlflow,tensorboard"]
    bench, tune = tmp_path / "bench-sphere", tmp_path / "tune-sphere"
    for argv in (
        ["bench", "--algos", "es,cmaes", "--seeds", "1", "--generations", "4", *small, "--out", str(bench)],
        [
            "tune",
            "--algo",
            "cmaes",
            "--trials",
            "2",
            "--set",
            "run.generations=4",
            *small,
            "--out",
            str(tune),
        ],
    ):
        monkeypatch.setattr(sys, "argv", ["gfo", *argv])
        cli.main()
    err = capsys.readouterr().err
    assert err.count("mlflow: run ") == 2  # where the trackers write: said once per command
    for root, names in ((bench, {"es-seed-0", "cmaes-seed-0"}), (tune, {"trial-0000", "trial-0001"})):
        client = MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow' / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(root.name)
        runs = client.search_runs([experiment.experiment_id])
        assert {r.info.run_name for r in runs} == names
        assert {r.data.tags["gfo.group"] for r in runs} == {root.name}
        for r in runs:
            run_dir = Path(r.data.tags["gfo.run_dir"])
            assert_mlflow_matches(client, r.info.run_id, run_dir)
            assert_tensorboard_matches(run_dir)
    trial_params = {r.data.params["algo.stdev_init"] for r in client.search_runs([experiment.experiment_id])}
    assert len(trial_params) == 2  # each trial's own settings
