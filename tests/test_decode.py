"""The continuous-batching engine (gfo_llm.decode) against the `model.generate` reference (engine=hf)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch

from gfo_llm.batched import PopulationGenerator
from gfo_llm.decode import greedy_decode, stop_length, stop_matcher
from gfo_llm.lora import init_lora
from gfo_llm.model import chat_prompt
from gfo_llm.spaces import LoRASpace, Space, SVDSpace

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TARGETS = ("q_proj", "v_proj")
# Mixed prompt lengths (5 to 40 words): prefill groups need padding, rows join batches of other lengths.
QUESTIONS = [
    "Hi",
    "What is 12 + 7?",
    "Name a colour.",
    "Count to five, please, and then tell me why you stopped there and not later on.",
    "Why is the sky blue? " * 4,
    "x",
]


def stop_often(engine: PopulationGenerator, population: torch.Tensor, texts: list[str]) -> None:
    """Declare the tokens the tiny random model writes most an EOS: rows then stop mid-batch."""
    result = engine.generate(population, texts, 12)
    ids = engine.tokenizer([t for row in result.completions for t in row], add_special_tokens=False)
    counts = Counter(t for row in ids["input_ids"] for t in row[1:])
    engine._eos = sorted({*engine._eos, *(t for t, _ in counts.most_common(2))})


def build(model: Any, kind: str) -> tuple[Space, torch.Tensor]:
    lora = init_lora(model, TARGETS, rank=4, method="pissa" if kind == "svd" else "random")
    space: Space = SVDSpace(lora) if kind == "svd" else LoRASpace(lora)
    noise = torch.randn(3, space.dim, generator=torch.Generator().manual_seed(1))
    return space, space.center() + (0.5 if kind == "svd" else 0.3) * noise


@pytest.mark.parametrize(
    ("kind", "row_budget", "early_eos"),
    [("svd", 64, False), ("svd", 4, True), ("lora", 5, True), ("lora", 1, False), ("svd", 7, True)],
)
def test_continuous_equals_hf_generate(
    tiny_lm_copy: tuple[Any, Any], kind: str, row_budget: int, early_eos: bool
) -> None:
    """Same greedy tokens, counts and stop flags as one `generate` call per chunk (fp32).

    A budget below the rows (18) forces refills; an extra EOS id makes rows stop mid-batch.
    """
    model, tokenizer = tiny_lm_copy
    texts = [chat_prompt(tokenizer, q) for q in QUESTIONS]
    space, population = build(model, kind)
    engine = PopulationGenerator(model, tokenizer, space, row_budget=row_budget)
    if early_eos:
        stop_often(engine, population, texts)
    got = engine.generate(population, texts, 14)
    engine.engine = "hf"
    expected = engine.generate(population, texts, 14)
    assert got.completions == expected.completions
    assert got.num_tokens == expected.num_tokens
    assert got.finished == expected.finished
    if early_eos:  # not vacuous: some rows stopped early, others ran to the cap
        assert 0 < got.capped_fraction < 1
    assert engine.last_stats is not None and engine.last_stats.peak_rows <= row_budget


def test_stop_patterns_cut_both_engines_at_the_same_token(tiny_lm_copy: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_lm_copy
    texts = [chat_prompt(tokenizer, q) for q in QUESTIONS]
    space, population = build(model, "svd")
    engine = PopulationGenerator(model, tokenizer, space, row_budget=8)
    free = engine.generate(population, texts, 16)
    # A pattern that some rows reach: the second character of the first completion.
    pattern = free.completions[0][0][1]
    stop = (f"[{pattern}]" if pattern.isalnum() else "[" + "\\" + pattern + "]",)
    got = engine.generate(population, texts, 16, stop)
    engine.engine = "hf"
    expected = engine.generate(population, texts, 16, stop)
    assert got.completions == expected.completions and got.num_tokens == expected.num_tokens
    assert got.finished == expected.finished
    assert got.total_tokens < free.total_tokens
    for row_text, row_free in zip(got.completions, free.completions, strict=True):
        for text, full in zip(row_text, row_free, strict=True):
            assert full.startswith(text)
            assert (pattern in text) or text == full


def test_finished_rows_leave_the_batch(tiny_lm_copy: tuple[Any, Any]) -> None:
    """Every decode step computes only live rows: rows x steps == generated tokens - one per row."""
    model, tokenizer = tiny_lm_copy
    texts = [chat_prompt(tokenizer, q) for q in QUESTIONS]
    space, population = build(model, "svd")
    engine = PopulationGenerator(model, tokenizer, space, row_budget=6)
    stop_often(engine, population, texts)
    forward_rows: list[int] = []
    model.register_forward_pre_hook(
        lambda _m, args, kwargs: forward_rows.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    result = engine.generate(population, texts, 20)
    stats = engine.last_stats
    assert stats is not None
    rows = len(population) * len(texts)
    # Each row's first token comes from its prefill, each further token from one decode row.
    assert stats.decode_rows == result.total_tokens - rows
    assert sum(forward_rows) == stats.forward_positions
    # Refilled: the batch stayed near full while rows were waiting, and never exceeded the budget.
    assert max(stats.rows_per_step) == 6 and stats.prefill_calls > 3
    assert 0 < result.capped_fraction < 1


def test_shared_prefix_is_computed_once_per_candidate(tiny_lm_copy: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_lm_copy
    texts = [chat_prompt(tokenizer, q) for q in QUESTIONS]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    common = 0
    while all(row[common] == ids[0][common] for row in ids):
        common += 1
    assert common > 5  # the chat template's system turn
    space, population = build(model, "svd")
    engine = PopulationGenerator(model, tokenizer, space, row_budget=64)
    engine.generate(population, texts, 4)
    stats = engine.last_stats
    assert stats is not None
    suffix = sum(len(row) - common for row in ids)
    padded = len(texts) * max(len(row) - common for row in ids)
    # Shared prefix once per candidate, then each row's rest (padded to its prefill group's longest).
    prefill = stats.prefill_positions - len(population) * common
    assert len(population) * suffix <= prefill <= len(population) * padded


def test_greedy_decode_without_rows_of_a_group_and_single_prompt(tiny_lm_copy: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_lm_copy
    prompt = tokenizer(chat_prompt(tokenizer, "Hi"), add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        tokens, finished, stats = greedy_decode(
            model,
            [prompt],
            select=lambda rows: None,
            eos=[tokenizer.eos_token_id],
            max_new_tokens=5,
            row_budget=4,
        )
    assert len(tokens[0]) == 5 and finished == [False]
    assert stats.decode_steps == 4 and stats.prefill_calls == 1


def test_stop_length_and_matcher(tiny_lm: tuple[Any, Any]) -> None:
    tokenizer = tiny_lm[1]
    ids = tokenizer("So 3 + 4 = 7\n#### 7\nand more", add_special_tokens=False)["input_ids"]
    from problems._answers import ANSWER_LINE

    matcher = stop_matcher([ANSWER_LINE], tokenizer)
    assert matcher is not None and stop_matcher([], tokenizer) is None
    n = stop_length(ids, matcher)
    assert n is not None
    assert tokenizer.decode(ids[:n]).endswith("#### 7\n")
    assert stop_length(ids[: n - 1], matcher) is None


def test_throughput_benchmark_on_the_tiny_model(tiny_model_dir: Any) -> None:
    """benchmarks/population_throughput.py end to end: every method, the ratios, outputs equal."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "population_throughput.py"
    spec = importlib.util.spec_from_file_location("population_throughput", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--model", str(tiny_model_dir), "--popsize", "3", "--prompts", "4", "--max-new-tokens", "6"]
    results = bench.main([*argv, "--row-budget", "5", "--repeats", "1", "--no-rss", "--dtype", "fp32"])
    assert set(results["methods"]) == {"engine", "hf_generate", "base", "peft_mixed"}
    assert results["outputs_match"] is True and results["rows_matching_hf_generate"] == "12/12"
    for key in ("engine_over_hf_generate", "engine_over_base", "ceiling_fraction", "ceiling_tokens_per_s"):
        assert results[key] > 0
    engine = results["methods"]["engine"]
    assert engine["rows"] == 12 and engine["forward_tokens_per_s"] > engine["tokens_per_s"]
