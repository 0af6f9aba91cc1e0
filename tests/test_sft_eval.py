"""`gfo eval` and `gfo sft` on the tiny model, through the CLI's entry point function.

The reference for every evaluation is plain transformers (+ `peft.PeftModel`) greedy generation on
the ORIGINAL model directory: an exported adapter must give the completions the run scored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import gfo

from gfo.registry import PROBLEMS
from gfo.stats import mcnemar_exact, wilson_interval
from gfo_llm.evaluate import adapter_settings, evaluate
from gfo_llm.problem import LLMProblem
from problems.arithmetic import Arithmetic, ArithmeticConfig

TEXT_PROBLEM = "test-eval-text-reward"
PARITY_PROBLEM = "test-eval-parity-reward"
TINY = ("problem.dtype=fp32", "problem.max_new_tokens=8")


class TextTask(Arithmetic):
    """Arithmetic prompts with a reward that separates random completions: a hash of the text."""

    name: ClassVar[str] = "text-reward"

    def reward(self, completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
        return [sum(map(ord, text)) % 101 / 100 for text in completions]


class ParityTask(TextTask):
    """TextTask's prompts with an all-or-nothing reward, so that about half the items count as right."""

    name: ClassVar[str] = "parity-reward"

    def reward(self, completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
        return [float(sum(map(ord, text)) % 2 == 0) for text in completions]


@pytest.fixture(autouse=True, scope="module")
def _setup() -> Iterator[None]:
    for name, task in ((TEXT_PROBLEM, TextTask), (PARITY_PROBLEM, ParityTask)):
        if name not in PROBLEMS.names():
            PROBLEMS.register(name, LLMProblem.for_task(task))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is faster on one thread, far faster on a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_grad_mode() -> Iterator[None]:
    enabled = torch.is_grad_enabled()  # LLMProblem.prepare switches autograd off process-wide
    yield
    torch.set_grad_enabled(enabled)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def reference_completions(
    model_dir: Path, prompts: list[str], max_new_tokens: int, adapter: Path | None
) -> list[str]:
    """Greedy completions from plain transformers (+ PEFT), one left-padded batch, cut at the first EOS."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    eos = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    eos |= set(configured) if isinstance(configured, list) else {configured} - {None}
    batch = tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(eos),
        )  # fmt: skip
    texts: list[str] = []
    for row in out[:, batch["input_ids"].shape[1] :].tolist():
        stop = next((i for i, token in enumerate(row) if token in eos), None)
        texts.append(
            str(tokenizer.decode(row if stop is None else row[: stop + 1], skip_special_tokens=True))
        )
    return texts


# ------------------------------------------------------------------ eval


@pytest.fixture(scope="module")
def run_and_evals(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A short search on the text-reward task, then `gfo eval` of its adapter and of the base model."""
    root = tmp_path_factory.mktemp("eval")
    common = ("--set", f"problem.model={tiny_model_dir}", *[a for s in TINY for a in ("--set", s)])
    code, err = gfo(
        "run", "--algo", "pgpe", "--problem", TEXT_PROBLEM, "--popsize", "4", "--generations", "2",
        "--out", str(root / "run"), "--quiet", *common, "--set", "problem.batch_size=2",
        "--set", "problem.eval_every=1", "--set", "problem.eval_limit=4", "--set", "problem.stdev=0.5",
    )  # fmt: skip
    assert code == 0, err
    # The run's own settings (model, dtype, max_new_tokens) through its config.toml.
    code, err = gfo(
        "eval", "--config", str(root / "run" / "config.toml"), "--adapter", str(root / "run" / "adapter"),
        "--limit", "4", "--out", str(root / "adapter"), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    code, err = gfo(
        "eval", "--problem", TEXT_PROBLEM, "--limit", "4", "--out", str(root / "base"), "--quiet", *common
    )
    assert code == 0, err
    (root / "base.stderr").write_text(err)  # what the user read
    return {"run": root / "run", "adapter": root / "adapter", "base": root / "base"}


def test_exported_adapter_reproduces_the_run_in_peft(
    run_and_evals: dict[str, Path], tiny_model_dir: Path
) -> None:
    run, evaluated = run_and_evals["run"], run_and_evals["adapter"]
    records = read_jsonl(evaluated / "completions.jsonl")
    result = json.loads((evaluated / "eval.json").read_text())
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert result["items"] == 4 and result["adapter_rank"] == 16  # PiSSA export: rank 2r
    prompts = [r["prompt"] for r in records]
    peft_texts = reference_completions(tiny_model_dir, prompts, 8, run / "adapter")
    assert [r["completion"] for r in records] == peft_texts
    # The held-out score of eval.json is the task's reward of the PEFT completions ...
    examples = [r["example"] for r in records]
    rewards = TextTask(ArithmeticConfig()).reward(peft_texts, examples)
    assert result["mean_reward"] == pytest.approx(sum(rewards) / 4, abs=1e-12)
    # ... and the score the run gave the exported solution on the same held-out items.
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selected_by"] == "heldout"
    assert result["mean_reward"] == pytest.approx(summary["heldout_best"], abs=1e-12)
    # The adapter changes the model: the comparison is not between two copies of the base model.
    base = read_jsonl(run_and_evals["base"] / "completions.jsonl")
    assert [r["completion"] for r in base] != peft_texts


def test_eval_of_the_base_model_is_plain_transformers(
    run_and_evals: dict[str, Path], tiny_model_dir: Path
) -> None:
    records = read_jsonl(run_and_evals["base"] / "completions.jsonl")
    result = json.loads((run_and_evals["base"] / "eval.json").read_text())
    assert result["adapter"] is None and result["split"] == "test" and result["model"] == str(tiny_model_dir)
    prompts = [r["prompt"] for r in records]
    assert [r["completion"] for r in records] == reference_completions(tiny_model_dir, prompts, 8, None)
    # The exact text the model saw: the task prompt inside the chat template.
    task = TextTask(ArithmeticConfig())
    assert records[0]["prompt"].endswith(
        f"<|im_start|>user\n{task.prompt(records[0]['example'])}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert result["mean_reward"] == pytest.approx(sum(r["reward"] for r in records) / 4, abs=1e-12)
    assert result["generated_tokens"] == sum(r["tokens"] for r in records)
    assert result["capped_fraction"] == sum(not r["finished"] for r in records) / 4


def test_eval_library_chunks_give_the_same_result(
    run_and_evals: dict[str, Path], tiny_model_dir: Path
) -> None:
    config = LLMProblem.for_task(TextTask).Config(model=str(tiny_model_dir), dtype="fp32", max_new_tokens=8)
    seen: list[tuple[int, int]] = []
    result = evaluate(
        TEXT_PROBLEM, config, limit=4, chunk_size=3, progress=lambda d, t, _: seen.append((d, t))
    )
    assert seen == [(3, 4), (4, 4)]
    whole = json.loads((run_and_evals["base"] / "eval.json").read_text())
    assert (result["mean_reward"], result["accuracy"]) == (whole["mean_reward"], whole["accuracy"])


def test_eval_says_when_the_split_has_fewer_items_than_the_limit(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A --limit past the split's end scores what there is and says so, with the setting that draws
    more: the learning harness asks for 520 fresh arithmetic items from a 500-item split."""
    common = ("--set", f"problem.model={tiny_model_dir}", *[a for s in TINY for a in ("--set", s)])
    code, err = gfo(
        "eval", "--problem", "arithmetic", "--limit", "5", "--offset", "1", "--out", str(tmp_path / "e"),
        "--quiet", "--set", "problem.test_size=3", *common,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["items"] == 2
    note = "note: --limit 5, but arithmetic's test split has 2 items past --offset 1; scored 2"
    assert note in err and "--set problem.test_size=6" in err
    code, err = gfo(
        "eval", "--problem", "arithmetic", "--limit", "2", "--out", str(tmp_path / "f"), "--quiet",
        "--set", "problem.test_size=3", *common,
    )  # fmt: skip
    assert code == 0 and "note:" not in err


def test_eval_reports_the_mean_reward_and_the_accuracy_each_by_its_name(
    run_and_evals: dict[str, Path],
) -> None:
    """With partial credit (TextTask's rewards lie in [0, 1)) the two differ: the accuracy counts exact
    answers (reward >= 1), as `correct/items` and `--compare` do, and the mean reward averages."""
    records = read_jsonl(run_and_evals["base"] / "completions.jsonl")
    result = json.loads((run_and_evals["base"] / "eval.json").read_text())
    rewards = [r["reward"] for r in records]
    correct = sum(r >= 1 for r in rewards)
    assert result["correct"] == correct and result["accuracy"] == correct / 4
    assert result["correct_when"] == "reward >= 1"
    assert result["mean_reward"] == pytest.approx(sum(rewards) / 4, abs=1e-12)
    assert result["mean_reward"] != result["accuracy"], "rewards without partial credit: a weak check"
    assert result["nonfinite_rewards"] == 0
    line = (run_and_evals["base"].with_suffix(".stderr")).read_text().strip().splitlines()[-1]
    assert line.startswith(
        f"mean reward {result['mean_reward']:.4f}, accuracy {result['accuracy']:.4f} ({correct}/4 with "
        f"reward >= 1) on {TEXT_PROBLEM} test, "
    ), line


class BrokenItemTask(TextTask):
    """TextTask whose reward raises on the test split's second item."""

    name: ClassVar[str] = "broken-item-reward"

    def reward(self, completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
        second = self.examples("test")[1]
        if any(e["expression"] == second["expression"] for e in examples):
            raise KeyError("answer")
        return super().reward(completions, examples)


def test_eval_with_a_failing_reward_counts_the_item_wrong_and_keeps_the_mean_honest(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from conftest import every_written_file_is_strict_json

    if "test-eval-broken-item" not in PROBLEMS.names():
        PROBLEMS.register("test-eval-broken-item", LLMProblem.for_task(BrokenItemTask))
    config = LLMProblem.for_task(BrokenItemTask).Config(
        model=str(tiny_model_dir), dtype="fp32", max_new_tokens=8
    )
    with pytest.warns(UserWarning, match=r"broken-item-reward: the reward of solution 0 .* on item 1 of"):
        result = evaluate("test-eval-broken-item", config, limit=4, chunk_size=2, out=tmp_path)
    assert every_written_file_is_strict_json(tmp_path) == 2  # eval.json, completions.jsonl
    records = read_jsonl(tmp_path / "completions.jsonl")
    # The reward is one call per chunk: the chunk holding item 1 (items 0 and 1) has no rewards.
    assert [r["reward"] is None for r in records] == [True, True, False, False]
    assert result["nonfinite_rewards"] == 2 and result["items"] == 4
    assert result["mean_reward"] == pytest.approx((records[2]["reward"] + records[3]["reward"]) / 2)
    assert result["accuracy"] == sum(r["reward"] is not None and r["reward"] >= 1 for r in records) / 4


def test_eval_refuses_bad_input(tmp_path: Path) -> None:
    code, err = gfo("eval", "--problem", "sphere", "--out", str(tmp_path))
    assert code == 2 and err.strip().splitlines() == [
        "error: problem 'sphere' is not an LLM task; gfo eval takes e.g. gsm8k or arithmetic"
    ]
    code, err = gfo("eval", "--problem", "arithmetic", "--set", "run.seed=1")
    assert code == 2 and "takes problem.KEY=VALUE only" in err
    code, err = gfo("eval", "--problem", "arithmetic", "--adapter", str(tmp_path))
    assert code == 2 and "has no adapter_config.json" in err
    with pytest.raises(Exception, match="must be >= 1"):
        evaluate("arithmetic", ArithmeticConfig(), limit=0)


def test_compare_pairs_the_adapter_with_the_base_model_item_by_item(
    run_and_evals: dict[str, Path], tmp_path: Path
) -> None:
    """`gfo eval --adapter RUN/adapter --compare base`: both scored on the same items, and the printed
    table, eval.json and compare.jsonl agree with each other and with the two plain evaluations."""
    out = tmp_path / "compare"
    code, err = gfo(
        "eval", "--config", str(run_and_evals["run"] / "config.toml"), "--problem", PARITY_PROBLEM,
        "--adapter", str(run_and_evals["run"] / "adapter"), "--compare", "base", "--limit", "4",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads((out / "eval.json").read_text())
    c = result["compare"]
    assert result["items"] == c["n"] == 4 and result["problem"] == PARITY_PROBLEM  # the existing keys stay
    assert c["adapter_a"] == str((run_and_evals["run"] / "adapter").resolve()) and c["adapter_b"] is None
    # The same items and the same completions as the two plain evaluations: only the reward differs.
    records_a, records_b = read_jsonl(out / "completions.jsonl"), read_jsonl(out / "completions_b.jsonl")
    for mine, plain in ((records_a, "adapter"), (records_b, "base")):
        reference = read_jsonl(run_and_evals[plain] / "completions.jsonl")
        assert [(r["prompt"], r["completion"]) for r in mine] == [
            (r["prompt"], r["completion"]) for r in reference
        ]
    pairs = read_jsonl(out / "compare.jsonl")
    assert [p["index"] for p in pairs] == [0, 1, 2, 3]
    parity = ParityTask(ArithmeticConfig())
    for side, records in (("a", records_a), ("b", records_b)):
        rewards = parity.reward([r["completion"] for r in records], [r["example"] for r in records])
        assert [p[f"reward_{side}"] for p in pairs] == rewards
        assert [p[f"correct_{side}"] for p in pairs] == [r >= 1 for r in rewards]
        assert c[f"correct_{side}"] == sum(r >= 1 for r in rewards)
    # The figures are consistent with each other and with gfo.stats.
    gained = sum(p["outcome"] == "gained" for p in pairs)
    lost = sum(p["outcome"] == "lost" for p in pairs)
    assert (c["gained"], c["lost"]) == (gained, lost) and gained + lost > 0  # the adapter changed answers
    assert c["acc_a"] - c["acc_b"] == pytest.approx((c["gained"] - c["lost"]) / c["n"], abs=1e-12)
    assert c["acc_a"] == c["correct_a"] / 4 and c["acc_b"] == c["correct_b"] / 4
    assert c["ci_a"] == list(wilson_interval(c["correct_a"], 4))
    assert c["p_value"] == mcnemar_exact(gained, lost)
    assert c["eval_b"]["adapter"] is None and c["eval_b"]["items"] == 4
    # What the user reads: the same numbers.
    lines = err.strip().splitlines()
    assert lines[0] == f"paired comparison on {PARITY_PROBLEM} test, 4 items (correct: reward >= 1)"
    row_a = f"  A  {c['acc_a']:.4f}    [{c['ci_a'][0]:.4f}, {c['ci_a'][1]:.4f}]     {c['correct_a']}/4"
    assert lines[2].startswith(row_a) and lines[2].endswith(c["adapter_a"])
    row_b = f"  B  {c['acc_b']:.4f}    [{c['ci_b'][0]:.4f}, {c['ci_b'][1]:.4f}]     {c['correct_b']}/4"
    assert lines[3].startswith(row_b) and lines[3].endswith("base (no adapter)")
    assert lines[4] == (
        f"gained {gained} (B wrong, A right), lost {lost} (A wrong, B right); "
        f"A - B = {c['acc_a'] - c['acc_b']:+.4f}, exact McNemar p = {c['p_value']:.4g}"
    )

    # A plain evaluation into the same folder drops the comparison files it does not rewrite.
    code, err = gfo(
        "eval", "--config", str(run_and_evals["run"] / "config.toml"), "--problem", PARITY_PROBLEM,
        "--limit", "1", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert not (out / "compare.jsonl").exists() and not (out / "completions_b.jsonl").exists()
    assert "compare" not in json.loads((out / "eval.json").read_text())


def test_compare_refuses_a_missing_adapter_before_loading(tiny_model_dir: Path, tmp_path: Path) -> None:
    missing, out = tmp_path / "nowhere", tmp_path / "out"
    tiny = ("--problem", "arithmetic", "--set", f"problem.model={tiny_model_dir}", "--out", str(out))
    code, err = gfo("eval", *tiny, "--compare", str(missing))
    assert code == 2 and err.strip().splitlines() == [
        f"error: --compare directory {str(missing)!r} does not exist; pass a PEFT adapter directory "
        "(e.g. RUN/adapter) or 'base' for the model without an adapter"
    ]
    code, err = gfo("eval", *tiny, "--compare", str(tmp_path))
    assert code == 2 and "has no adapter_config.json" in err
    code, err = gfo("eval", *tiny, "--adapter", str(missing), "--compare", "base")  # A is checked too
    assert code == 2 and "has no adapter_config.json" in err
    assert not out.exists()


# ------------------------------------------------------------------ sft


def test_sft_prompts_are_the_search_prompts(tiny_model_dir: Path) -> None:
    from gfo_llm.sft import task_for, training_pairs

    config = ArithmeticConfig(model=str(tiny_model_dir), dtype="fp32", system_prompt="Be brief.")
    problem = PROBLEMS.get("arithmetic")(config)
    problem.prepare()
    prompts, completions = training_pairs(task_for("arithmetic", config), problem.tokenizer, config, limit=3)
    examples = list(problem.task.examples("train"))[:3]
    assert prompts == problem.prompts(examples)
    assert completions[0] == problem.task.reference(examples[0]) + "<|im_end|>"


def test_sft_adapter_warm_starts_a_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    from gfo_llm.adapters import load_peft_adapter
    from gfo_llm.model import load_model

    model = ("--set", f"problem.model={tiny_model_dir}", "--set", "problem.rank=4")
    code, err = gfo(
        "sft", "--problem", "arithmetic", "--out", str(tmp_path / "sft"), "--limit", "8",
        "--batch-size", "4", "--lr", "0.01", "--quiet", *model,
    )  # fmt: skip
    assert code == 0, err
    adapter = tmp_path / "sft" / "adapter"
    result = json.loads((tmp_path / "sft" / "sft.json").read_text())
    assert result["steps"] == 2 and result["examples"] == 8
    assert result["last_loss"] < result["first_loss"]  # it learned something from the references
    assert (adapter / "adapter_model.safetensors").is_file()
    assert adapter_settings(adapter) == (4, ("k_proj", "o_proj", "q_proj", "v_proj"))
    base, _ = load_model(str(tiny_model_dir), "fp32")
    lora = load_peft_adapter(adapter, base, rank=4, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    assert len(lora) == 8 and all(b.abs().max() > 0 for _, b in lora.values())  # B was trained from 0

    run = (
        "run", "--algo", "pgpe", "--problem", "arithmetic", "--popsize", "4", "--generations", "1", "--quiet",
        "--set", "problem.dtype=fp32", "--set", "problem.max_new_tokens=4", "--set", "problem.batch_size=2",
        "--set", "problem.eval_every=0", "--set", f"problem.init_adapter={adapter}",
    )  # fmt: skip
    code, err = gfo(*run, "--out", str(tmp_path / "run"), *model)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["init"] == str(adapter) and summary["search_dim"] == 8 * 2 * 4
    assert adapter_settings(tmp_path / "run" / "adapter")[0] == 4  # no PiSSA residual: rank stays r

    wrong = ("--set", f"problem.model={tiny_model_dir}", "--set", "problem.rank=8")
    code, err = gfo(*run, "--out", str(tmp_path / "wrong"), *wrong)
    assert code == 2
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: adapter {str(adapter)!r} has rank 4 but rank 8 was asked; set problem.rank=4"
    )


def test_sft_micro_batches_give_the_whole_batchs_update(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A step of 4 examples in micro-batches of 1 (4 passes, accumulated) trains the adapter that one
    pass of 4 trains: the loss is normalized by the step's completion tokens, not per micro-batch, and
    the examples have different lengths (one micro-batch's mean would weight them otherwise)."""
    from safetensors.torch import load_file

    adapters = []
    for micro in ("4", "1"):
        code, err = gfo(
            "sft", "--problem", "arithmetic", "--out", str(tmp_path / micro), "--limit", "8",
            "--batch-size", "4", "--micro-batch-size", micro, "--lr", "0.01", "--quiet",
            "--set", f"problem.model={tiny_model_dir}", "--set", "problem.rank=4",
        )  # fmt: skip
        assert code == 0, err
        result = json.loads((tmp_path / micro / "sft.json").read_text())
        assert result["steps"] == 2 and result["settings"]["micro_batch_size"] == int(micro)
        adapters.append(load_file(str(tmp_path / micro / "adapter" / "adapter_model.safetensors")))
    whole, micro_batched = adapters
    assert whole.keys() == micro_batched.keys()
    moved = max(float(t.abs().max()) for k, t in whole.items() if "lora_B" in k)  # B starts at 0
    assert moved > 1e-3
    for key, tensor in whole.items():
        torch.testing.assert_close(micro_batched[key], tensor, rtol=1e-4, atol=1e-6 * moved)


def test_sft_refuses_bad_input() -> None:
    code, err = gfo("sft", "--problem", "arithmetic", "--lr", "0")
    assert code == 2 and err.strip().splitlines() == ["error: --lr must be > 0; got 0.0, use e.g. 1e-4"]
    code, err = gfo("sft", "--problem", "arithmetic", "--batch-size", "16", "--micro-batch-size", "5")
    assert code == 2 and err.strip().splitlines() == [
        "error: --batch-size must be a multiple of --micro-batch-size (a step is whole micro-batches);"
        " got 16 and 5, use --micro-batch-size 1 or a divisor of 16"
    ]
    code, err = gfo("sft", "--problem", "rastrigin")
    assert code == 2 and "not an LLM task" in err
