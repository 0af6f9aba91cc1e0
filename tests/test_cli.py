"""The CLI through its real entry point: runs, determinism, listing, run directory contents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gfo.loop import VOLATILE

TIMING = VOLATILE  # times and memory


def gfo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "gfo.cli", *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_run_writes_a_complete_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    gfo(
        "run",
        "--algo",
        "sep-cmaes",
        "--problem",
        "sphere",
        "--generations",
        "40",
        "--out",
        str(out),
        "--set",
        "problem.dim=5",
        "--quiet",
    )
    for name in (
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.pt",
        "curve.png",
        "best.safetensors",
    ):
        assert (out / name).exists(), name
    rows = metrics(out)
    assert [r["generation"] for r in rows] == list(range(40))
    for key in ("evaluations", "best", "mean", "median", "best_so_far", "stepsize_mean"):
        assert key in rows[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] == min(r["best"] for r in rows) == rows[-1]["best_so_far"]
    assert summary["evaluations"] == rows[-1]["evaluations"]
    assert summary["best"] < rows[0]["mean"] / 100


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    runs = []
    for i, seed in enumerate(("7", "7", "8")):
        out = tmp_path / f"r{i}"
        gfo(
            "run",
            "--algo",
            "pgpe",
            "--problem",
            "rastrigin",
            "--generations",
            "15",
            "--seed",
            seed,
            "--set",
            "problem.dim=6",
            "--out",
            str(out),
            "--quiet",
        )
        runs.append(metrics(out))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_config_file_and_set_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'algorithm = "cem"\nproblem_name = "rosenbrock"\n[problem]\ndim = 4\n[run]\ngenerations = 5\n'
    )
    out = tmp_path / "run"
    gfo("run", "--config", str(cfg), "--set", "algo.popsize=20", "--out", str(out), "--quiet")
    saved = (out / "config.toml").read_text()
    assert 'algorithm = "cem"' in saved and "popsize = 20" in saved and "dim = 4" in saved
    assert metrics(out)[-1]["evaluations"] == 5 * 20
    # the saved config runs as is
    gfo("run", "--config", str(out / "config.toml"), "--out", str(tmp_path / "again"), "--quiet")
    assert metrics(tmp_path / "again") == metrics(out)


def test_list_shows_algorithms_problems_and_defaults() -> None:
    text = gfo("list").stdout
    for name in ("es", "pgpe", "snes", "xnes", "cmaes", "sep-cmaes", "cem", "sphere", "ellipsoid", "gsm8k"):
        assert name in text
    assert "stdev_max_change = 0.2" in text


HEAVY = ("torch", "transformers", "vllm", "evotorch", "ray")


def commands() -> list[str]:
    """Every command `gfo` has, its plug-ins' (gfo_llm's eval and sft) included."""
    import typer.main

    from gfo import cli

    cli.add_plugin_commands()
    names = sorted(typer.main.get_command(cli.app).commands)  # type: ignore[attr-defined]
    assert {"run", "list", "tune", "bench", "report", "eval", "sft"} <= set(names), names
    return names


@pytest.mark.parametrize("args", [["--help"], *([c, "--help"] for c in commands())], ids=" ".join)
def test_help_does_not_import_torch(args: list[str]) -> None:
    """`gfo --help` and every command's, each in a new interpreter, with Python's import log
    (`-X importtime`): the help is shown and none of the heavy packages is among the modules imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gfo.cli", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Usage: " in proc.stdout and "--help" in proc.stdout, proc.stdout
    # stderr lines: "import time:  self [us] | cumulative | imported package", the name indented
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert {"gfo.errors", "typer"} <= imported, "no import log: the check would pass vacuously"
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert not heavy, f"gfo {' '.join(args)} imported {heavy[:5]}"


def test_unknown_algorithm_is_one_line_exit_2() -> None:
    proc = gfo("run", "--algo", "cmaess", "--problem", "sphere", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "did you mean 'cmaes'" in proc.stderr


def test_run_progress_setting_decides_the_progress_display(tmp_path: Path) -> None:
    """`run.progress` (and `--quiet`, its flag) turns the progress display off and is recorded."""
    base = ["run", "--algo", "pgpe", "--problem", "sphere", "--generations", "2", "--set", "problem.dim=3"]
    shown = gfo(*base, "--out", str(tmp_path / "shown"))
    assert "pgpe on sphere: popsize" in shown.stderr
    assert "progress = true" in (tmp_path / "shown" / "config.toml").read_text()
    for flag in (["--set", "run.progress=false"], ["--quiet"]):
        out = tmp_path / flag[-1].replace("=", "-")
        hidden = gfo(*base, *flag, "--out", str(out))
        assert "popsize" not in hidden.stderr and "done: best" in hidden.stderr
        assert "progress = false" in (out / "config.toml").read_text()
        assert metrics(out) == metrics(tmp_path / "shown")
