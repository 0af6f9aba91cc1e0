"""The benchmark scripts on the tiny model: sft_memory.py and fitness_signal.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> Any:
    """`benchmarks/NAME.py` as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_sft_memory_benchmark(tiny_model_dir: Path, tmp_path: Path) -> None:
    """benchmarks/sft_memory.py: each micro-batch size in its own process, its peak RSS from the
    kernel, ratios to the first; the same step loss at every size (the same update)."""
    out = tmp_path / "sft-memory.json"
    argv = ["--problem", "arithmetic", "--limit", "4", "--batch-size", "4", "--micro", "4,1"]
    argv += ["--json", str(out), "--set", f"problem.model={tiny_model_dir}", "--set", "problem.rank=4"]
    result = load_script("sft_memory").main(argv)
    assert json.loads(out.read_text()) == result
    whole, micro = result["rows"]
    assert (whole["micro_batch_size"], micro["micro_batch_size"]) == (4, 1)
    assert whole["steps"] == micro["steps"] == 1
    assert whole["peak_rss_mb"] > 100 and whole["rss_over_first"] == 1.0
    assert micro["rss_over_first"] == round(micro["peak_rss_mb"] / whole["peak_rss_mb"], 3)
    assert micro["first_loss"] == pytest.approx(whole["first_loss"], rel=1e-4)


def test_fitness_signal_benchmark(tiny_model_dir: Path, tmp_path: Path) -> None:
    """benchmarks/fitness_signal.py: candidates scored on two disjoint prompt sets, the rank
    correlation of the two scorings, and how many completions differ from the centre's."""
    out = tmp_path / "signal.json"
    argv = ["--problem", "arithmetic", "--popsize", "6", "--json", str(out)]
    for key, value in (("model", tiny_model_dir), ("rank", 4), ("batch_size", 4), ("max_new_tokens", 4),
                       ("dtype", "fp32"), ("stdev", 5.0)):  # fmt: skip
        argv += ["--set", f"problem.{key}={value}"]
    result = load_script("fitness_signal").main(argv)
    assert json.loads(out.read_text()) == result
    assert result["popsize"] == 6 and result["prompts_per_set"] == 4
    assert [len(f) for f in result["fitness"]] == [6, 6]
    assert result["completions"] == (6 + 1) * 4 * 2  # the centre too, on both sets
    # The tiny random model answers nothing right: every candidate ties, so there is no ranking.
    assert result["fitness"] == [[0.0] * 6, [0.0] * 6] and result["spearman_rho"] is None
    # At a spread this large the random model's text changes under most candidates.
    assert 0.5 < result["text_changed"] <= 1.0 and result["reward_changed"] == 0.0


def test_fitness_signal_benchmark_with_sampled_answers(tiny_model_dir: Path, tmp_path: Path) -> None:
    """At a temperature, each candidate's fitness is its mean over k samples per prompt: k times the
    completions, the same draws for every candidate (the centre's samples at spread 0 are each
    candidate's), and other draws than greedy."""
    argv = ["--problem", "arithmetic", "--popsize", "3"]
    for key, value in (("model", tiny_model_dir), ("rank", 4), ("batch_size", 2), ("max_new_tokens", 4),
                       ("dtype", "fp32"), ("temperature", 1.0), ("samples_per_prompt", 3)):  # fmt: skip
        argv += ["--set", f"problem.{key}={value}"]
    script = load_script("fitness_signal")
    sampled = script.main([*argv, "--set", "problem.stdev=1e-9"])
    assert sampled["samples_per_prompt"] == 3 and sampled["completions"] == (3 + 1) * 2 * 2 * 3
    assert sampled["text_changed"] == 0.0  # common random numbers: a negligible offset draws the same
    greedy = script.main([*argv[:-4], "--set", "problem.stdev=1e-9"])
    assert greedy["samples_per_prompt"] == 1 and greedy["completions"] == (3 + 1) * 2 * 2


def test_fitness_signal_benchmark_on_likelihood(tiny_model_dir: Path, tmp_path: Path) -> None:
    """With problem.fitness=likelihood the candidates are ranked by their references'
    log-probability: no ties even on the random model, and the centre's figure is the engine's."""
    argv = ["--problem", "arithmetic", "--popsize", "6", "--json", str(tmp_path / "signal.json")]
    for key, value in (("model", tiny_model_dir), ("rank", 4), ("batch_size", 4), ("dtype", "fp32"),
                       ("stdev", 2.0), ("fitness", "likelihood")):  # fmt: skip
        argv += ["--set", f"problem.{key}={value}"]
    result = load_script("fitness_signal").main(argv)
    assert result["fitness_kind"] == "likelihood"
    assert result["completions"] == 0 and result["scored_references"] == (6 + 1) * 4 * 2
    assert result["text_changed"] is None and result["reward_changed"] is None
    assert result["binomial_sd"] is None
    assert all(-20 < f < -5 for f in result["fitness"][0] + result["fitness"][1])
    assert len(set(result["fitness"][0])) == 6 and result["spearman_rho"] is not None
    assert -1.0 <= result["spearman_rho"] <= 1.0


def test_fitness_signal_split_half() -> None:
    """The rank correlation on literal scorings: the same order, the reverse, and a tie."""
    split_half = load_script("fitness_signal").split_half
    rho, p = split_half([0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.3, 0.5, 0.6, 0.9])
    assert rho == pytest.approx(1.0) and p == pytest.approx(0.0, abs=1e-6)
    rho, _ = split_half([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])
    assert rho == pytest.approx(-1.0)
    assert split_half([0.25] * 4, [0.1, 0.2, 0.3, 0.4]) == (None, None)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["problem.rank=0"], "problem.rank must be >= 1"),
        (["algo.popsize=4"], "--set algo.popsize has no effect here"),
    ],
)
def test_fitness_signal_bad_input(sets: list[str], message: str) -> None:
    """Bad settings: one line naming the problem, exit code 2, no traceback, before any model loads."""
    command = [sys.executable, str(ROOT / "benchmarks" / "fitness_signal.py"), "--problem", "arithmetic"]
    for item in sets:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1
