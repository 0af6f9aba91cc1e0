"""`gfo learn` end to end on the tiny model: SFT, search, fresh-item paired scores; recipes as data."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import gfo

from gfo.errors import GfoError
from gfo.stats import paired_summary
from gfo_llm.evaluate import FRESH_SEED, fresh_items, unseen
from gfo_llm.learn import as_text, correct, eval_key, grpo_settings, records, sets
from gfo_llm.recipe import Recipe, load_recipe, recipe_names
from problems._instructions import count_words
from problems.instruct import mentions, repetition


def learn(*argv: str) -> dict[str, Any]:
    """`gfo learn ARGV` in this process; the result it wrote."""
    code, err = gfo("learn", *argv)
    assert code == 0, err
    return dict(json.loads(Path(argv[argv.index("--json") + 1]).read_text()))


@pytest.mark.parametrize("sft", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_learn_end_to_end(tiny_model_dir: Path, tmp_path: Path, sft: bool) -> None:
    out = tmp_path / "arith.json"
    argv = ["--recipe", "arithmetic", "--json", str(out), "--model", str(tiny_model_dir), "--items", "6"]
    argv += ["--generations", "2", "--popsize", "2", "--sft-limit", "4"] + ([] if sft else ["--no-sft"])
    for key, value in (("batch_size", 2), ("eval_limit", 3), ("eval_every", 1), ("max_new_tokens", 6),
                       ("rank", 4)):  # fmt: skip
        argv += ["--set", f"{key}={value}"]
    argv += ["--set", "dtype=fp32", "--task-set", "test_size=4"]  # fewer test items than --items
    saved = learn(*argv)
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
    # KL from the base model on the fresh answers: the final adapter moved; a PiSSA start is the base.
    assert saved["kl_to_base"]["final"] > 0 and (saved["kl_to_base"]["start"] > 0) == sft
    if sft:  # the adapter's shape (rank, target_modules) goes to the SFT step: the search starts from it
        config = json.loads((out.with_suffix("") / "sft" / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 4

    # The figures are the paired statistics of the per-item files the evals wrote, on the items
    # that are in neither split of the training stream.
    runs = out.with_suffix("")
    assert saved["settings"]["problem"] == {
        "max_new_tokens": 64,
        "model": str(tiny_model_dir),
        "test_size": "4",
    }
    examples = [r["example"] for r in records(runs / "eval-final")]
    keep = unseen("arithmetic", {k: as_text(v) for k, v in saved["settings"]["problem"].items()}, examples)
    final = correct(records(runs / "eval-final"), keep)
    start = correct(records(runs / ("eval-start" if sft else "eval-base")), keep)
    assert saved["final_vs_start"] == json.loads(json.dumps(paired_summary(final, start)))
    assert saved["n_items"] == keep.count(True) and saved["dropped_seen_items"] == keep.count(False)
    # Fresh items: another data_seed than the search's, whose prompts differ.
    assert len(examples) == 6 and examples[0] != examples[1]
    # The fresh stream draws --items 6 where every other step's test split has 4.
    evals = [step["command"] for step in saved["steps"] if " eval " in step["command"]]
    assert len(evals) == 3 and all("problem.test_size=6" in c.split() for c in evals)
    assert all(f"problem.data_seed={FRESH_SEED}" in c.split() for c in evals)
    assert out.with_suffix(".png").is_file() and saved["heldout_curve"][0]["completions"] == 0.0

    if sft:
        # A second run from the same start reuses the base and start evals (same command, same
        # adapter bytes), and scores the same items the same way.
        again = tmp_path / "again.json"
        argv2 = [*argv[: argv.index("--sft-limit")], "--start", str(runs / "sft" / "adapter")]
        argv2[argv2.index("--json") + 1] = str(again)
        result2 = learn(*argv2, *argv[argv.index("--set") :])
        reused = [step for step in result2["steps"] if "reused" in step]
        assert [Path(step["reused"]).parent for step in reused] == [tmp_path / "eval-cache"] * 2
        assert (result2["base_acc"], result2["start_acc"]) == (saved["base_acc"], saved["start_acc"])
        # The reused SFT's training time still counts: it is part of what the final adapter cost.
        made = json.loads((runs / "sft" / "sft.json").read_text())["wall_s"]
        assert result2["sft_wall_s"] == round(made, 1)
        assert result2["sft_reused"] == str(runs / "sft" / "sft.json")
        assert result2["wall_s"] == pytest.approx(made + result2["search_wall_s"], abs=0.1)  # each rounded
        assert records(again.with_suffix("") / "eval-start") == records(runs / "eval-start")


def test_task_sets_reach_every_step_and_the_task_breaks_its_answers_down(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--task-set` defines the items of every step; `--fresh offset` scores the test split past the
    search's selection items (one instruction has too few prompts for another seed to be fresh);
    the instruct task's `breakdown` reports checks, topic, loops and length of every scored model."""
    out = tmp_path / "comma.json"
    argv = ["--recipe", "instruct", "--json", str(out), "--model", str(tiny_model_dir), "--items", "4"]
    argv += ["--generations", "1", "--popsize", "2", "--eval-cache", "", "--fresh", "offset"]
    for key, value in (("constraints", "punctuation:no_comma"), ("constraints_per_prompt", 1),
                       ("train_size", 1000), ("test_size", 6), ("max_new_tokens", 4), ("dtype", "fp32"),
                       ("on_topic", "true"), ("min_words", 3)):  # fmt: skip
        argv += ["--task-set", f"{key}={value}"]
    for key, value in (("batch_size", 2), ("eval_limit", 2)):
        argv += ["--set", f"{key}={value}"]
    saved = learn(*argv)
    runs = out.with_suffix("")
    for step in ("eval-base", "eval-final"):
        examples = [r["example"] for r in records(runs / step)]
        assert [e["instruction_id_list"] for e in examples] == [["punctuation:no_comma"]] * 4
        assert [r["index"] for r in records(runs / step)] == [2, 3, 4, 5]  # past eval_limit 2
        assert all(e["topic_word"] for e in examples)  # the topic check reached the evals too
    searched = tomllib.loads((runs / "es" / "config.toml").read_text())["problem"]
    assert (searched["constraints"], searched["test_size"]) == (["punctuation:no_comma"], 6)
    assert saved["settings"]["problem"]["constraints_per_prompt"] == "1"
    assert (saved["n_items"], saved["dropped_seen_items"], saved["settings"]["fresh"]) == (4, 0, "offset")
    assert set(saved["breakdown"]) == {"base", "start", "final"}
    rows = records(runs / "eval-final")
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
    # The last lines printed: the fresh-item figures, then the breakdown of base and final answers.
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-2].startswith(f"instruct (es): base {saved['base_acc']:.3f}  start ")
    # strict compliance on the fresh items, both p-values and the KL to the base model, in one line
    assert f"final {saved['final_acc']:.3f} on 4 fresh items; " in printed[-2]
    assert f"p(final vs start) = {saved['p_final_vs_start']:.2g}, " in printed[-2]
    assert f"p(final vs base) = {saved['p_final_vs_base']:.2g}; " in printed[-2]
    kl = saved["kl_to_base"]
    assert printed[-2].endswith(
        f"KL to the base model per answer token: start {kl['start']:.3f}, final {kl['final']:.3f}"
    )
    assert printed[-1] == (
        f"answers naming their topic's word: base {saved['breakdown']['base']['topic_named'][0]}/4, final "
        f"{named}/4; looping: base {saved['breakdown']['base']['repetitive'][0]}/4, final {looped}/4; "
        f"median words: base {saved['breakdown']['base']['median_words']}, final {final['median_words']}"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task-set", "constraints"], "--task-set takes KEY=VALUE, e.g. constraints=punctuation:no_comma; "
         "got 'constraints'"),
        (["--recipe", "gsm8k", "--fresh", "seed"],
         "fresh items by seed need a generated task; gsm8k has no data_seed, use offset"),
        (["--recipe", "arithmetic", "--method", "grpo"],
         "the arithmetic recipe's ES scores reference answers and generates no completions, so GRPO has no "
         "equal budget to take from it; give one with --completions N (e.g. 2048)"),
        (["--recipe", "arithmetic-reward", "--method", "grpo", "--set", "problem.fitness=likelihood"],
         "the arithmetic-reward recipe's ES scores reference answers and generates no completions, so "
         "GRPO has no equal budget to take from it; give one with --completions N (e.g. 2048)"),
        (["--recipe", "arithmetic", "--completions", "64"],
         "--completions is GRPO's budget; ES's is --popsize x --set batch_size x --generations"),
        (["--recipe", "quickstrat"], "unknown recipe 'quickstrat'; did you mean 'quickstart'? (known: …)"),
        (["--recipe", "missing.toml"], "recipe file 'missing.toml' does not exist; pass a .toml file or a "
         "recipe name: …"),
        (["--method", "ppo"], "--method must be es or grpo; got 'ppo'"),
        (["--set", "batch_size=abc"], "problem.batch_size must be an integer; got 'abc'"),
        (["--set", "algo.bogus=1"], "unknown key algo.bogus (known: …"),
        (["--task-set", "test_size=many"], "problem.test_size must be an integer; got 'many'"),
        (["--items", "0"], "--items must be at least 1; got 0"),
    ],
)  # fmt: skip
def test_bad_learn_arguments_are_one_line_before_any_step(
    argv: list[str], message: str, tmp_path: Path
) -> None:
    code, err = gfo("learn", "--json", str(tmp_path / "x.json"), *argv)
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    head, _, tail = f"error: {message}".partition("…")
    assert line.startswith(head) and line.endswith(tail), line
    assert not (tmp_path / "x").exists()  # nothing ran


def test_a_failing_step_ends_learn_with_one_line(tmp_path: Path) -> None:
    """A step that fails (here the base eval, on a model that does not exist) ends `gfo learn` with
    its exit code and one line naming the step, no traceback."""
    command = [sys.executable, "-m", "gfo.cli", "learn", "--recipe", "arithmetic"]
    command += ["--model", str(tmp_path / "missing"), "--json", str(tmp_path / "out.json")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step failed with exit code 2: ") and " eval --problem arithmetic " in last
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_is_a_valid_problem_config(name: str) -> None:
    """Each shipped recipe's settings build its task's and its algorithm's config: `make run` cannot
    fail on a typo in them; the GRPO step takes the same recipe's problem settings."""
    from gfo.config import build
    from gfo.registry import ALGORITHMS, PROBLEMS
    from gfo_llm.grpo import problem_config

    recipe = load_recipe(name)
    assert recipe.description and recipe.task in PROBLEMS.names()
    problem = {
        k.removeprefix("problem."): v
        for k, v in recipe.search.items()
        if "." not in k or k.startswith("problem.")
    }
    values = {k: as_text(v) for k, v in {**recipe.problem, **problem}.items()}
    cls: Any = PROBLEMS.get(recipe.task)
    config = build(cls.Config, values, "problem")
    assert config.max_new_tokens == recipe.problem["max_new_tokens"]
    algo = {k.removeprefix("algo."): as_text(v) for k, v in recipe.search.items() if k.startswith("algo.")}
    build(ALGORITHMS.get(recipe.algo).Config, algo, "algo")
    assert recipe.sft == (recipe.task != "instruct")  # make run (quickstart) has no warm start
    if name in ("guarded", "quickstart"):  # make run: the guards in reward and measure
        assert (config.space, config.stdev, config.on_topic, config.max_repetition) == (
            "lora",
            0.02,
            True,
            0.5,
        )
        assert "problem.on_topic=true" in sets(recipe.problem)  # the command reads as docs write it
    settings = {k: v for k, v in recipe.search.items() if not k.startswith("algo.")}
    grpo_config = problem_config(recipe.task, sets({**recipe.problem, **grpo_settings(settings)})[1::2])
    assert grpo_config.max_new_tokens == recipe.problem["max_new_tokens"]
    assert grpo_config.fitness == "reward"  # GRPO trains on the reward whatever ES's fitness is
    assert (config.fitness == "likelihood") == (name == "arithmetic")
    if recipe.fresh == "offset" and "test_size" in values:  # fresh items past the selection must exist
        assert config.test_size >= config.eval_limit + recipe.items


def test_a_recipe_file_of_ones_own_works_like_a_shipped_one(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text('task = "arithmetic"\ngenerations = 3\n[search]\nbatch_size = 4\n')
    assert load_recipe(str(mine)) == Recipe(task="arithmetic", generations=3, search={"batch_size": 4})
    mine.write_text('task = "arithmetic"\ngeneratons = 3\n')
    with pytest.raises(GfoError, match=r"unknown key\(s\) generatons; the keys are algo, description, fresh"):
        load_recipe(str(mine))
    mine.write_text('task = "arithmetic"\nfresh = "later"\n')
    with pytest.raises(GfoError, match="recipe fresh must be seed or offset; got 'later'"):
        load_recipe(str(mine))
    mine.write_text("generations = 3\n")
    with pytest.raises(GfoError, match="names no task"):
        load_recipe(str(mine))


def test_fresh_items_by_seed_or_past_the_selection_items() -> None:
    seed = fresh_items("arithmetic", {"test_size": 500}, 520, "seed")
    assert seed == ["--set", f"problem.data_seed={FRESH_SEED}", "--set", "problem.test_size=520"]
    assert fresh_items("arithmetic", {}, 10, "seed") == ["--set", f"problem.data_seed={FRESH_SEED}"]
    assert fresh_items("gsm8k", {"eval_limit": 64}, 500, "offset") == ["--offset", "64"]
    assert fresh_items("instruct", {}, 300, "offset") == ["--offset", "64"]  # the default eval_limit


def test_eval_cache_key_follows_the_scoring_code_not_the_commit(tmp_path: Path) -> None:
    """A docs or benchmark change keeps the cached evals; a change of the code that scores, of the
    command or of the adapter's bytes does not."""
    root, adapter = tmp_path / "repo", tmp_path / "adapter"
    for path, text in (("gfo/a.py", "x = 1"), ("problems/b.py", "y = 2"), ("docs/d.md", "doc")):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"w1")
    code = (root / "gfo", root / "problems")
    command = ["python", "-m", "gfo.cli", "eval", "--problem", "arithmetic"]
    key = eval_key(command, str(adapter), code)
    (root / "docs/d.md").write_text("doc, edited")
    (root / "gfo/__pycache__").mkdir()
    (root / "gfo/__pycache__/a.pyc").write_bytes(b"\0")
    assert eval_key(command, str(adapter), code) == key
    assert eval_key(["other-python", *command[1:]], str(adapter), code) == key  # the interpreter's path
    changed = []
    for edit in (
        lambda: (root / "problems/b.py").write_text("y = 3"),
        lambda: (adapter / "adapter_model.safetensors").write_bytes(b"w2"),
    ):
        edit()
        changed.append(eval_key(command, str(adapter), code))
    assert len({key, *changed}) == 3
    assert eval_key([*command, "--limit", "5"], str(adapter), code) not in {key, *changed}


def test_another_algorithm_drops_the_recipes_algo_settings(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A recipe's `algo.*` settings are its own algorithm's (PGPE's ClipUp speed), which `gfo run` refuses
    for another: with `--algo snes` they are dropped, and the caller's `--set algo.*` still applies."""
    out = tmp_path / "snes.json"
    argv = [
        "--recipe",
        "arithmetic-reward",
        "--json",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--items",
        "2",
    ]
    argv += ["--no-sft", "--algo", "snes", "--generations", "1", "--popsize", "2", "--eval-cache", ""]
    for key, value in (("batch_size", 2), ("eval_limit", 2), ("max_new_tokens", 4), ("dtype", "fp32"),
                       ("algo.center_learning_rate", 0.5)):  # fmt: skip
        argv += ["--set", f"{key}={value}"]
    saved = learn(*argv)
    searched = tomllib.loads((out.with_suffix("") / "es" / "config.toml").read_text())
    assert searched["algo"]["center_learning_rate"] == 0.5 and "max_speed" not in searched["algo"]
    assert saved["settings"]["algo"] == "snes" and "algo.max_speed" not in saved["settings"]["search"]
    assert saved["completions"] == 2 * 2


def test_the_benchmark_script_is_gfo_learn(tmp_path: Path) -> None:
    """benchmarks/learning.py runs `gfo learn` with its arguments (the lab log's commands)."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "learning.py"),
            "--recipe",
            "nope",
            "--json",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: unknown recipe 'nope'")


def test_a_stopped_search_is_continued_and_a_finished_one_run_again(tmp_path: Path) -> None:
    """`gfo learn` run again after a Ctrl-C resumes its search from the checkpoint (not --force,
    which would delete it); a search that reached its generations is run again."""
    from gfo_llm.learn import stopped

    run = tmp_path / "es"
    gfo("run", "--algo", "pgpe", "--problem", "sphere", "--generations", "3", "--out", str(run), "--quiet")
    assert not stopped(run, 3) and stopped(run, 5) and not stopped(tmp_path / "none", 5)
    (run / "summary.json").unlink()  # killed before any summary
    assert stopped(run, 3)
