"""`gfo report`: every plotted point is the run folder's own number, for one run, a tiny-model LLM run
(held-out, throughput, samples; also tracked, to check the real adapter artifact), several runs and
a bench folder; and headless Chromium renders the page where it is installed."""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from gfo import bench, cli, loop, report
from gfo.spec import resolve
from gfo.tracking import STATE_FILE, Tracking

LLM = ["problem.dtype=fp32", "problem.max_new_tokens=6", "problem.batch_size=2", "problem.eval_limit=2",
       "problem.eval_every=2", "problem.rank=2", "problem.train_size=12", "problem.test_size=4",
       "algo.popsize=4"]  # fmt: skip


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def column(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float("nan") if r[key] is None else float(r[key]) for r in rows]


def same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all((x != x and y != y) or x == y for x, y in zip(a, b, strict=True))


def series(figure: report.Figure, gid: str, panel: int = 0) -> report.Series:
    return next(s for s in figure.panels[panel].series if s.gid == gid)


def page_data(page: Path) -> dict[str, Any]:
    text = page.read_text()
    start = text.index("<script type='application/json' id='gfo-report-data'>") + len(
        "<script type='application/json' id='gfo-report-data'>"
    )
    return json.loads(text[start : text.index("</script>", start)].replace("<\\/", "</"))


def run_sphere(out: Path, algo: str = "pgpe", seed: int = 0, generations: int = 8) -> Path:
    overrides = [f"run.generations={generations}", f"run.seed={seed}", "problem.dim=4"]
    loop.prepare_run_dir(out, resume=False, force=False)
    loop.run(resolve(algo, "sphere", overrides=overrides), out)
    return out


@pytest.fixture(scope="module")
def sphere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_sphere(tmp_path_factory.mktemp("sphere") / "pgpe-sphere")


@pytest.fixture(scope="module")
def llm_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 generations of sep-CMA-ES on arithmetic with the tiny random model, held-out every 2,
    tracked with the trackers that are installed."""
    from importlib.util import find_spec

    out = tmp_path_factory.mktemp("llm") / "run"
    track = ",".join(n for n in ("tensorboard", "mlflow") if find_spec(n))
    overrides = [
        f"problem.model={tiny_model_dir}",
        *LLM,
        "run.generations=3",
        *([f"run.track={track}"] * bool(track)),
    ]
    spec = resolve("sep-cmaes", "arithmetic", overrides=overrides)
    enabled, threads = torch.is_grad_enabled(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loop.prepare_run_dir(out, resume=False, force=False)
        loop.run(spec, out, callbacks=[Tracking(spec.run.track, out)] if track else [])
    finally:
        torch.set_grad_enabled(enabled)  # LLMProblem.prepare turns autograd off process-wide
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "bench-sphere"
    runs = bench.plan(["es", "cmaes"], "sphere", seeds=2, out=out, overrides=["problem.dim=4"], generations=6)
    bench.run_all(runs, log=lambda line: None)
    return out


# ---------------------------------------------------------------- the numbers


def test_one_run_curves_are_metrics_jsonl(sphere: Path) -> None:
    rows = records(sphere)
    runs = report.find_runs([sphere])
    figures = {f.key: f for f in report.figures(runs)}
    assert set(figures) == {"fitness", "stepsize"}  # a test function: no held-out, no tokens
    fitness, label = figures["fitness"], "pgpe-sphere"
    generations = [r["generation"] + 1.0 for r in rows]
    for panel, x in enumerate((generations, column(rows, "evaluations"), column(rows, "wall_s"))):
        for quantity in ("best_so_far", "mean", "best"):
            s = series(fitness, f"{label}|{quantity}", panel)
            assert same(s.x, x) and same(s.y, column(rows, quantity)), (panel, quantity)
        spread = series(fitness, f"{label}|spread", panel)
        assert same(spread.y, column(rows, "best")) and same(spread.y2 or [], column(rows, "worst"))
    assert [p.xlabel for p in fitness.panels][1] == "evaluations (candidates scored)"
    step = series(figures["stepsize"], f"{label}|stepsize_mean")
    assert same(step.x, generations) and same(step.y, column(rows, "stepsize_mean"))

    # what is drawn is those numbers
    drawn = report.draw(fitness, runs)
    line = next(ln for ln in drawn.axes[0].get_lines() if ln.get_gid() == f"{label}|best_so_far")
    assert same(list(line.get_xdata()), generations) and same(
        list(line.get_ydata()), column(rows, "best_so_far")
    )
    assert drawn.axes[0].get_yscale() == "log"  # a minimized positive fitness


def test_page_is_self_contained_and_carries_the_plotted_numbers(sphere: Path) -> None:
    page = report.write([sphere])
    assert page == sphere / "report.html"
    text = page.read_text()
    assert text.count("src='data:image/png;base64,") == 2
    # no external resource: base64 images may spell "http" by chance, so look outside them
    outside = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert "http://" not in outside and not re.search(r"(src|href)=['\"]https?:", outside)
    assert sorted(p.name for p in (sphere / "report").iterdir()) == ["fitness.png", "stepsize.png"]
    data = page_data(page)
    best = next(s for s in data["fitness"][0]["series"] if s["gid"] == "pgpe-sphere|best_so_far")
    assert best["y"] == [r["best_so_far"] for r in records(sphere)]
    assert "algo.stdev_learning_rate" in text and "the problem records no samples" in text


def test_samples_are_rendered_whatever_their_fields(sphere: Path, tmp_path: Path) -> None:
    """Long or multi-line text fields are preformatted blocks under their name, the rest inline."""
    run_dir = shutil.copytree(sphere, tmp_path / "run")
    best = report.best_generation(report.find_runs([run_dir])[0])
    assert best is not None and best > 0
    story = "Once upon a time <b>there</b> was a vector\nthat wanted to be small."
    samples = [
        {"generation": 0, "input": story, "output": "x" * 60, "score": 1.5, "tag": "start"},
        {"generation": 1, "input": "never shown", "output": "y", "score": 2.0, "tag": "neither"},
        {"generation": best, "input": "short", "output": "z" * 60, "score": 0.25, "tag": "kept"},
    ]
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    text = report.write([run_dir]).read_text()
    assert "<h2>Samples</h2>" in text
    assert "start (generation 0)" in text and f"kept solution (generation {best})" in text
    # "input" and "output" are long in some sample, so a block in every sample: one field, one shape
    assert f"<p class='field'>input</p><pre>{html.escape(story)}</pre>" in text
    assert "<p class='field'>input</p><pre>short</pre>" in text
    assert f"<p class='field'>output</p><pre>{'z' * 60}</pre>" in text
    assert "<p class='note'>score 1.5, tag start</p>" in text
    assert "<p class='note'>score 0.25, tag kept</p>" in text
    assert "never shown" not in text and "<b>there</b>" not in text


def test_llm_run_page_has_heldout_throughput_and_samples(
    llm_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["gfo", "report", str(llm_run)])
    cli.main()
    assert "report: " in capsys.readouterr().err
    page = llm_run / "report.html"
    data, rows = page_data(page), records(llm_run)
    assert set(data) == {"fitness", "heldout", "throughput", "stepsize"}
    held = [r for r in rows if "heldout" in r]
    assert len(held) == 2  # after generation 1 (every 2) and at the end
    centre = next(s for s in data["heldout"][0]["series"] if s["gid"] == "run|heldout/center")
    assert centre["x"] == [0.0] + [r["generation"] + 1.0 for r in held]
    assert centre["y"] == [rows[0]["heldout_initial"]] + [r["heldout"]["center"] for r in held]
    on_completions = next(s for s in data["heldout"][1]["series"] if s["gid"] == "run|heldout/center")
    assert on_completions["x"] == [0.0] + [r["completions_total"] for r in held]
    tokens = next(s for s in data["throughput"][0]["series"] if s["gid"] == "run|generated_tokens_per_s")
    assert tokens["y"] == [r["generated_tokens_per_s"] for r in rows]
    capped = next(s for s in data["throughput"][1]["series"] if s["gid"] == "run|capped_fraction")
    assert capped["y"] == [r["capped_fraction"] for r in rows]

    text = page.read_text()
    samples = [json.loads(line) for line in (llm_run / "samples.jsonl").read_text().splitlines()]
    best = report.best_generation(report.find_runs([llm_run])[0])
    assert "<h2>Samples</h2>" in text
    assert "start (generation 0)" in text and f"kept solution (generation {best})" in text
    for s in samples:
        if s["generation"] in (0, best):
            assert f"<p class='field'>prompt</p><pre>{html.escape(s['prompt'])}</pre>" in text
            assert html.escape(s["completion"]) in text and f"reward {s['reward']:.6g}" in text
    assert "<|im_start|>" not in text  # model output is escaped, never markup


def test_llm_run_tracked_in_mlflow_holds_the_exported_adapter(llm_run: Path, tmp_path: Path) -> None:
    pytest.importorskip(
        "mlflow", reason="mlflow is not installed: its own extra, pip install 'gfo[mlflow]' (not in dev)"
    )
    from mlflow.tracking import MlflowClient

    state = json.loads((llm_run / STATE_FILE).read_text())["mlflow"]
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    files = {a.path for a in client.list_artifacts(state["run_id"], "adapter")}
    assert files == {f"adapter/{p.name}" for p in (llm_run / "adapter").iterdir()}
    for name in files:
        local = Path(client.download_artifacts(state["run_id"], name, str(tmp_path)))
        assert local.read_bytes() == (llm_run / name).read_bytes(), name
    history = client.get_metric_history(state["run_id"], "capped_fraction")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == column(
        records(llm_run), "capped_fraction"
    )


# ---------------------------------------------------------------- several runs


def test_bench_folder_overlays_every_run_with_one_legend_entry_per_algorithm(bench_dir: Path) -> None:
    runs = report.find_runs([bench_dir])
    labels = [r.label for r in runs]
    assert labels == ["cmaes/seed-0", "cmaes/seed-1", "es/seed-0", "es/seed-1"]
    fitness = report.figures(runs)[0]
    for run in runs:
        rows = records(bench_dir / run.label)
        s = series(fitness, f"{run.label}|best_so_far")
        assert same(s.y, column(rows, "best_so_far")) and s.group == run.label.split("/")[0]
    legend = [t.get_text() for t in report.draw(fitness, runs).axes[0].get_legend().get_texts()]
    assert legend == ["cmaes (2 runs)", "es (2 runs)"]
    page = report.write([bench_dir])
    text = page.read_text()
    assert page == bench_dir / "report.html" and "Settings that differ between the runs" in text
    assert "<td>run.seed</td>" in text and "<td>algorithm</td>" in text


def test_several_run_folders_are_overlaid_and_written_in_their_common_folder(tmp_path: Path) -> None:
    a, b = run_sphere(tmp_path / "a", seed=1, generations=5), run_sphere(tmp_path / "b", "cmaes", 2, 5)
    page = report.write([a, b])
    assert page == tmp_path / "report.html"
    fitness = page_data(page)["fitness"][0]["series"]
    for run in (a, b):
        mean = next(s for s in fitness if s["gid"] == f"{run.name}|mean")
        assert (
            mean["y"] == [r["mean"] for r in records(run)] and mean["label"] == f"{run.name}: generation mean"
        )


def test_report_of_a_folder_without_runs_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["gfo", "report", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "holds no gfo run" in err


# ---------------------------------------------------------------- a real browser


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_headless_chromium_renders_the_page(llm_run: Path, tmp_path: Path) -> None:
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless Chromium here (Debian: apt-get install chromium)")
    page = report.write([llm_run], tmp_path / "page.html")
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2400"]
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True
    )
    assert png_size(shot) == (1280, 2400)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    ink = (pixels.mean(axis=2) < 0.6).mean()  # text, lines and axes, not a blank or error page
    assert 0.01 < ink < 0.5, ink
    # the figures are drawn: some rows hold the plot colours (tab10 blue) the report uses
    blue = ((abs(pixels[..., 0] - 0.12) < 0.08) & (abs(pixels[..., 2] - 0.71) < 0.1)).sum()
    assert blue > 500, blue
