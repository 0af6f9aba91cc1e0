"""benchmarks/learning.py end to end on the tiny model: SFT, search, fresh-item paired scores."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gfo.stats import paired_summary
from problems._instructions import count_words
from problems.instruct import mentions, repetition

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> Any:
    """`benchmarks/NAME.py` as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def harness() -> Any:
    return load_script("learning")


@pytest.mark.parametrize("sft", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_learning_harness_end_to_end(tiny_model_dir: Path, tmp_path: Path, sft: bool) -> None:
    out = tmp_path / "arith.json"
    argv = ["--recipe", "arithmetic", "--json", str(out), "--model", str(tiny_model_dir), "--items", "6"]
    argv += ["--generations", "2", "--popsize", "2", "--sft-limit", "4"] + ([] if sft else ["--no-sft"])
    for key, value in (
        ("batch_size", 2),
        ("eval_limit", 3),
        ("eval_every", 1),
        ("max_new_tokens", 6),
        ("rank", 4),
    ):
        argv += ["--set", f"{key}={value}"]
    argv += ["--set", "dtype=fp32", "--task-set", "test_size=4"]  # fewer test items than --items
    result = harness().main(argv)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    for key in ("task", "recipe", "base_acc", "start_acc", "final_acc", "n_items", "p_final_vs_start",
                "p_final_vs_base", "completions", "tokens", "wall_s", "sft_wall_s", "search_wall_s",
                "peak_rss_mb", "adapter", "commit", "dtype", "cpu"):  # fmt: skip
        assert key in saved, key
    # The arithmetic recipe's fitness is the reference answers' likelihood: it scores references
    # (popsize x batch x generations of them) and generates no training completions.
    assert saved["settings"]["search"]["fitness"] == "likelihood"
    assert saved["completions"] is None and saved["scored_references"] == 2 * 2 * 2
    assert saved["reference_tokens"] > saved["scored_references"]
    assert (saved["sft_wall_s"] > 0) == sft and Path(saved["adapter"], "adapter_config.json").is_file()
    # The adapter's shape (rank, target_modules) goes to the SFT step too: the search starts from it.
    if sft:
        assert (
            json.loads((out.with_suffix("") / "sft" / "adapter" / "adapter_config.json").read_text())["r"]
            == 4
        )

    # The figures are the paired statistics of the per-item files the evals wrote, on the items
    # that are in neither split of the training stream.
    module, runs = harness(), out.with_suffix("")
    assert saved["settings"]["problem"] == {
        "max_new_tokens": 64,
        "model": str(tiny_model_dir),
        "test_size": "4",
    }
    keep = module.unseen("arithmetic", runs / "eval-final", saved["settings"]["problem"])
    final = module.correct(runs / "eval-final", keep)
    start = module.correct(runs / ("eval-start" if sft else "eval-base"), keep)
    assert saved["final_vs_start"] == json.loads(json.dumps(paired_summary(final, start)))
    assert saved["n_items"] == keep.count(True) and saved["dropped_seen_items"] == keep.count(False)
    # Fresh items: another data_seed than the search's, whose prompts differ.
    fresh = [r["example"] for r in module.records(runs / "eval-final")]
    assert len(fresh) == 6 and fresh[0] != fresh[1]
    # The fresh stream draws --items 6 where every other step's test split has 4.
    evals = [step["command"] for step in saved["steps"] if " eval " in step["command"]]
    assert len(evals) == 3 and all("problem.test_size=6" in c.split() for c in evals)
    assert out.with_suffix(".png").is_file() and saved["heldout_curve"][0]["completions"] == 0.0

    if sft:
        # A second run from the same start reuses the base and start evals (same command, same
        # adapter bytes), and scores the same items the same way.
        again = tmp_path / "again.json"
        argv2 = [*argv[: argv.index("--sft-limit")], "--start", str(runs / "sft" / "adapter")]
        argv2[argv2.index("--json") + 1] = str(again)
        result2 = harness().main([*argv2, *argv[argv.index("--set") :]])
        reused = [step for step in result2["steps"] if "reused" in step]
        assert [Path(step["reused"]).parent for step in reused] == [tmp_path / "eval-cache"] * 2
        assert (result2["base_acc"], result2["start_acc"]) == (saved["base_acc"], saved["start_acc"])
        # The reused SFT's training time still counts: it is part of what the final adapter cost.
        made = json.loads((runs / "sft" / "sft.json").read_text())["wall_s"]
        assert result2["sft_wall_s"] == round(made, 1) and result2["sft_reused"] == str(
            runs / "sft" / "sft.json"
        )
        assert result2["wall_s"] == pytest.approx(made + result2["search_wall_s"], abs=0.1)  # each rounded
        assert module.records(again.with_suffix("") / "eval-start") == module.records(runs / "eval-start")


def test_task_sets_reach_every_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`--task-set` defines the items of every step; `--fresh offset` scores the test split past the
    search's selection items (one instruction has too few prompts for another seed to be fresh)."""
    out = tmp_path / "comma.json"
    argv = ["--recipe", "instruct", "--json", str(out), "--model", str(tiny_model_dir), "--items", "4"]
    argv += ["--generations", "1", "--popsize", "2", "--eval-cache", "", "--fresh", "offset"]
    for key, value in (
        ("constraints", "punctuation:no_comma"),
        ("constraints_per_prompt", 1),
        ("train_size", 1000),
        ("test_size", 6),
        ("max_new_tokens", 4),
        ("dtype", "fp32"),
        ("on_topic", "true"),
        ("min_words", 3),
    ):
        argv += ["--task-set", f"{key}={value}"]
    for key, value in (("batch_size", 2), ("eval_limit", 2)):
        argv += ["--set", f"{key}={value}"]
    saved = harness().main(argv)
    module, runs = harness(), out.with_suffix("")
    for step in ("eval-base", "eval-final"):
        examples = [r["example"] for r in module.records(runs / step)]
        assert [e["instruction_id_list"] for e in examples] == [["punctuation:no_comma"]] * 4
        assert [r["index"] for r in module.records(runs / step)] == [2, 3, 4, 5]  # past eval_limit 2
        assert all(e["topic_word"] for e in examples)  # the topic check reached the evals too
    searched = tomllib.loads((runs / "es" / "config.toml").read_text())["problem"]
    assert (searched["constraints"], searched["test_size"]) == (["punctuation:no_comma"], 6)
    assert saved["settings"]["problem"]["constraints_per_prompt"] == "1"
    assert (saved["n_items"], saved["dropped_seen_items"], saved["settings"]["fresh"]) == (4, 0, "offset")
    # Per-check counts of every scored model, and the answers that name their topic's word.
    assert set(saved["breakdown"]) == {"base", "start", "final"}
    rows = module.records(runs / "eval-final")
    named = sum(
        isinstance(r["completion"], str) and mentions(r["completion"], r["example"]["topic_word"])
        for r in rows
    )
    final = saved["breakdown"]["final"]
    assert final["topic_named"] == [named, 4] and tuple(final["checks"]["topic:mentioned"]) == (named, 4)
    assert tuple(final["checks"]["punctuation:no_comma"])[1] == 4
    looped = sum(isinstance(r["completion"], str) and repetition(r["completion"]) > 0.5 for r in rows)
    assert final["repetitive"] == [looped, 4]
    lengths = sorted(count_words(r["completion"]) if isinstance(r["completion"], str) else 0 for r in rows)
    assert final["median_words"] == (lengths[1] + lengths[2]) / 2
    assert tuple(final["checks"]["length:min_words"]) == (sum(n >= 3 for n in lengths), 4)
    strict = sum(float(r["reward"]) >= 1.0 for r in rows)
    assert strict <= min(named, final["checks"]["punctuation:no_comma"][0])
    # The instruct recipes start from the base model: no SFT step, no start eval.
    assert saved["settings"]["start"] == "pissa" and saved["sft_wall_s"] == 0 and not (runs / "sft").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--task-set", "constraints"],
            "takes KEY=VALUE, e.g. constraints=punctuation:no_comma; got 'constraints'",
        ),
        (
            ["--recipe", "gsm8k", "--fresh", "seed"],
            "--fresh seed needs a generated task; gsm8k has no data_seed",
        ),
        (
            ["--recipe", "arithmetic", "--method", "grpo"],
            "generates no completions, so GRPO has no equal budget to take from it; give one with",
        ),
        (
            ["--recipe", "arithmetic-reward", "--method", "grpo", "--set", "problem.fitness=likelihood"],
            "give one with --completions N",
        ),
        (
            ["--recipe", "arithmetic", "--completions", "64"],
            "--completions is GRPO's budget; ES's is --popsize x --set batch_size x --generations",
        ),
    ],
)
def test_bad_harness_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        harness().parse_args(["--json", "x.json", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_failing_step_ends_the_harness_with_one_line(tmp_path: Path) -> None:
    """A step that fails (here the base eval, on a model that does not exist) ends the harness with its
    exit code and one line naming the step, no traceback."""
    command = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--recipe", "arithmetic"]
    command += ["--model", str(tmp_path / "missing"), "--json", str(tmp_path / "out.json")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step failed with exit code 2: ") and " eval --problem arithmetic " in last
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("name", sorted(harness().RECIPES))
def test_every_recipe_is_a_valid_problem_config(name: str) -> None:
    """Each recipe's settings build its task's and its algorithm's config: `make run` cannot fail on a
    typo in them."""
    from gfo.config import build
    from gfo.registry import ALGORITHMS, PROBLEMS

    module = harness()
    recipe = module.RECIPES[name]
    problem = {
        k.removeprefix("problem."): v
        for k, v in recipe.search.items()
        if "." not in k or k.startswith("problem.")
    }
    values = {k: module.as_text(v) for k, v in {**recipe.problem, **problem}.items()}
    cls: Any = PROBLEMS.get(recipe.task)
    config = build(cls.Config, values, "problem")
    assert config.max_new_tokens == recipe.problem["max_new_tokens"]
    algo = {
        k.removeprefix("algo."): module.as_text(v) for k, v in recipe.search.items() if k.startswith("algo.")
    }
    build(ALGORITHMS.get(recipe.algo).Config, algo, "algo")
    assert recipe.sft == (recipe.task != "instruct")  # make run (quickstart) has no warm start
    if name in ("guarded", "quickstart"):  # make run: run 14's regime, the guards in reward and measure
        shape = (config.space, config.stdev, config.on_topic, config.max_repetition)
        assert shape == ("lora", 0.02, True, 0.5)
        assert "problem.on_topic=true" in module.sets(recipe.problem)  # the command reads as docs write it
    # The GRPO step (`--method grpo`) takes the same recipe's problem settings.
    grpo = load_script("grpo_baseline")
    settings = {k: v for k, v in recipe.search.items() if not k.startswith("algo.")}
    overrides = module.sets({**recipe.problem, **module.grpo_settings(settings)})[1::2]
    grpo_config = grpo.problem_config(recipe.task, overrides)
    assert grpo_config.max_new_tokens == recipe.problem["max_new_tokens"]
    assert grpo_config.fitness == "reward"  # GRPO trains on the reward whatever ES's fitness is
    assert (config.fitness == "likelihood") == (name == "arithmetic")
    if recipe.fresh == "offset" and recipe.generated:
        # fresh items past the selection items must exist in the test split
        assert config.test_size >= config.eval_limit + recipe.items


def test_eval_cache_key_follows_the_scoring_code_not_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A docs or benchmark change keeps the cached evals; a change of the code that scores, of the
    command or of the adapter's bytes does not."""
    module = harness()
    root, adapter = tmp_path / "repo", tmp_path / "adapter"
    for path, text in (("gfo/a.py", "x = 1"), ("problems/b.py", "y = 2"), ("pyproject.toml", "[project]"),
                       ("docs/d.md", "doc"), ("benchmarks/learning.py", "h")):  # fmt: skip
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"w1")
    monkeypatch.setattr(module, "ROOT", root)
    command = ["python", "-m", "gfo.cli", "eval", "--problem", "arithmetic"]
    key = module.eval_key(command, str(adapter))
    (root / "docs/d.md").write_text("doc, edited")
    (root / "benchmarks/learning.py").write_text("h2")
    (root / "gfo/__pycache__").mkdir()
    (root / "gfo/__pycache__/a.pyc").write_bytes(b"\0")
    assert module.eval_key(command, str(adapter)) == key
    assert module.eval_key(["other-python", *command[1:]], str(adapter)) == key  # the interpreter's path
    changed = []
    for edit in (
        lambda: (root / "problems/b.py").write_text("y = 3"),
        lambda: (root / "pyproject.toml").write_text("[project]\nversion = 2"),
        lambda: (adapter / "adapter_model.safetensors").write_bytes(b"w2"),
    ):
        edit()
        changed.append(module.eval_key(command, str(adapter)))
    assert len({key, *changed}) == 4
    assert module.eval_key([*command, "--limit", "5"], str(adapter)) not in {key, *changed}


def test_another_algorithm_drops_the_recipes_algo_settings(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A recipe's `algo.*` settings are its own algorithm's (PGPE's ClipUp speed), which `gfo run` refuses
    for another: with `--algo snes` they are dropped, and the caller's `--set algo.*` still applies."""
    out = tmp_path / "snes.json"
    argv = ["--recipe", "arithmetic-reward", "--json", str(out), "--model", str(tiny_model_dir)]
    argv += ["--items", "2"]
    argv += ["--no-sft", "--algo", "snes", "--generations", "1", "--popsize", "2", "--eval-cache", ""]
    for key, value in (
        ("batch_size", 2),
        ("eval_limit", 2),
        ("max_new_tokens", 4),
        ("dtype", "fp32"),
        ("algo.center_learning_rate", 0.5),
    ):
        argv += ["--set", f"{key}={value}"]
    saved = harness().main(argv)
    searched = tomllib.loads((out.with_suffix("") / "es" / "config.toml").read_text())
    assert searched["algo"]["center_learning_rate"] == 0.5 and "max_speed" not in searched["algo"]
    assert saved["settings"]["algo"] == "snes" and "algo.max_speed" not in saved["settings"]["search"]
    assert saved["completions"] == 2 * 2


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
