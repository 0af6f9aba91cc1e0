"""The population engine: batched per-row LoRA generation equals per-candidate PEFT generation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from conftest import generate_one
from torch import nn

from gfo.errors import GfoError
from gfo_llm.adapters import peft_model, save_peft_adapter
from gfo_llm.batched import GenerationResult, PopulationGenerator, _plan, decode_rows
from gfo_llm.layers import PopulationLinear, Rows, install
from gfo_llm.lora import init_lora
from gfo_llm.model import chat_prompt
from gfo_llm.spaces import LoRASpace, Space, SVDSpace

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
QUESTIONS = ["What is 12 + 7?", "Name a colour.", "Count to five, please.", "Hi", "Why is the sky blue?"]
TOKENS = 16


def prompts(tokenizer: Any, n: int = 4) -> list[str]:
    return [chat_prompt(tokenizer, q) for q in QUESTIONS[:n]]


def greedy(model: Any, tokenizer: Any, texts: list[str], max_new_tokens: int = TOKENS) -> list[str]:
    """Plain transformers greedy generation of one model on a left-padded batch."""
    from transformers import GenerationConfig

    encoded = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.inference_mode():
        out = model.generate(**encoded, generation_config=config)
    return decode_rows(tokenizer, out[:, encoded["input_ids"].shape[1] :], [tokenizer.eos_token_id])[0]


def make_population(space: Space, size: int, spread: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(size, space.dim, generator=torch.Generator().manual_seed(seed))
    population = space.center() + spread * noise
    population[0] = space.center()
    return population


@pytest.mark.parametrize(
    ("kind", "init", "spread", "row_budget"),
    [
        ("svd", "pissa", 0.5, 64),
        ("svd", "random", 2.0, 3),
        ("lora", "pissa", 0.2, 8),
        ("lora", "random", 0.3, 64),
    ],
)
def test_batched_equals_peft_per_candidate(
    tiny_lm_copy: tuple[Any, Any], kind: str, init: str, spread: float, row_budget: int
) -> None:
    """Greedy completions from one batched call == each candidate alone through PEFT (fp32).

    row_budget 3 < B = 4 splits the prompts; 64 > P x B puts the whole population in one call.
    """
    model, tokenizer = tiny_lm_copy
    lora = init_lora(model, TARGETS, rank=4, method=init)
    reference_base = copy.deepcopy(model)  # holds the PiSSA residual like the engine's model
    space: Space = SVDSpace(lora) if kind == "svd" else LoRASpace(lora)
    population = make_population(space, 3, spread)
    texts = prompts(tokenizer)
    result = PopulationGenerator(model, tokenizer, space, row_budget=row_budget).generate(
        population, texts, TOKENS
    )

    references = [
        greedy(peft_model(copy.deepcopy(reference_base), {"c": space.to_lora(v)}), tokenizer, texts)
        for v in population
    ]
    assert result.completions == references
    # Not vacuous: the candidates' adapters change what the model says.
    assert result.completions[1] != result.completions[0] and result.completions[2] != result.completions[0]


def test_pissa_centre_reproduces_the_original_model(
    tiny_lm: tuple[Any, Any], tiny_lm_copy: tuple[Any, Any]
) -> None:
    original, tokenizer = tiny_lm
    model, _ = tiny_lm_copy
    space = SVDSpace(init_lora(model, TARGETS, rank=4, method="pissa"))
    texts = prompts(tokenizer, 5)
    engine = PopulationGenerator(model, tokenizer, space, row_budget=4)
    expected = greedy(original, tokenizer, texts)
    assert generate_one(engine, None, texts, TOKENS).completions == [expected]
    # The residual alone (no adapter) is a different model: the centre's term is doing the work.
    engine.close()
    assert greedy(model, tokenizer, texts) != expected


def test_bf16_batched_matches_peft_up_to_rounding(tiny_lm: tuple[Any, Any]) -> None:
    """In bf16 the per-row term follows PEFT's arithmetic (float32 term, float32 add, one rounding)."""
    base = copy.deepcopy(tiny_lm[0]).to(torch.bfloat16)
    lora = init_lora(base, TARGETS, rank=4, method="pissa")
    space = SVDSpace(lora)
    population = make_population(space, 3, 0.5)
    reference_base = copy.deepcopy(base)
    install(base, space.modules)
    layers = {n: m for n, m in base.named_modules() if isinstance(m, PopulationLinear)}
    encoded = tiny_lm[1](prompts(tiny_lm[1]), padding=True, return_tensors="pt", add_special_tokens=False)
    rows = Rows.blocked(0, 3, 4)
    pop = space.population(population)
    for name, layer in layers.items():
        layer.select(name, pop, rows, space.factors[name])
    with torch.inference_mode():
        batched = base(
            input_ids=encoded["input_ids"].repeat(3, 1),
            attention_mask=encoded["attention_mask"].repeat(3, 1),
            logits_to_keep=1,
        )
    for c in range(3):
        reference = peft_model(copy.deepcopy(reference_base), {"c": space.to_lora(population[c])})
        with torch.inference_mode():
            expected = reference(**encoded, logits_to_keep=1).logits.float()
        got = batched.logits[4 * c : 4 * c + 4].float()
        # bf16 has 8 mantissa bits: a few units in the last place after 2 layers.
        assert (got - expected).abs().max() <= 0.05 * expected.abs().max()
        assert torch.equal(got[:, -1].argmax(-1), expected[:, -1].argmax(-1))


@pytest.mark.parametrize("kind", ["svd", "lora"])
def test_layer_with_any_row_order_equals_explicit_weights(tiny_lm_copy: tuple[Any, Any], kind: str) -> None:
    """Rows in arbitrary order (no candidate blocks): out_i = x_i (W + B_c A_c)^T for c = index[i]."""
    model, _ = tiny_lm_copy
    lora = init_lora(model, TARGETS, rank=4, method="pissa")
    space: Space = SVDSpace(lora) if kind == "svd" else LoRASpace(lora)
    population = make_population(space, 4, 0.3)
    name = space.modules[2]
    layer = install(model, [name])[name]
    index = torch.tensor([2, 0, 3, 3, 1, 2])
    rows = Rows.of(index)
    assert rows.blocks is None
    x = torch.randn(6, 5, layer.in_features)
    layer.select(name, space.population(population), rows, space.factors.get(name) if kind == "svd" else None)
    got = layer(x)
    for i, c in enumerate(index.tolist()):
        a, b = space.to_lora(population[c])[name]
        torch.testing.assert_close(got[i], x[i] @ (layer.weight + b @ a).T, atol=1e-5, rtol=1e-4)
    layer.clear()
    torch.testing.assert_close(layer(x), x @ layer.weight.T)


def test_rows_detect_candidate_blocks() -> None:
    assert Rows.of(torch.tensor([3, 3, 4, 4, 5, 5])).blocks == (3, 3, 2)
    assert Rows.of(torch.tensor([0, 0, 0])).blocks == (0, 1, 3)
    assert Rows.of(torch.tensor([0, 1, 1])).blocks is None
    assert torch.equal(Rows.blocked(2, 2, 3).index, torch.tensor([2, 2, 2, 3, 3, 3]))


@pytest.mark.parametrize(
    ("size", "n_prompts", "budget"), [(8, 8, 64), (10, 8, 64), (3, 4, 3), (5, 7, 1), (2, 3, 100)]
)
def test_plan_covers_every_row_once_within_budget(size: int, n_prompts: int, budget: int) -> None:
    chunks = _plan(size, n_prompts, budget)
    covered = [(c, p) for c0, c1, p0, p1 in chunks for c in range(c0, c1) for p in range(p0, p1)]
    assert sorted(covered) == [(c, p) for c in range(size) for p in range(n_prompts)]
    assert all((c1 - c0) * (p1 - p0) <= budget for c0, c1, p0, p1 in chunks)
    rows = [(c1 - c0) * (p1 - p0) for c0, c1, p0, p1 in chunks]
    assert max(rows) - min(rows) <= max(n_prompts, 1)  # balanced: no tiny last chunk
    assert (
        len(chunks) == -(-size * n_prompts // min(budget // n_prompts * n_prompts or budget, budget))
        or budget < n_prompts
    )


def test_decode_rows_counts_tokens_up_to_and_including_eos(tiny_lm: tuple[Any, Any]) -> None:
    tokenizer = tiny_lm[1]
    eos = tokenizer.eos_token_id
    hello = tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    rows = torch.tensor(
        [[*hello, eos, eos, eos], [*hello, 13, 13, 13], [eos, eos, eos, eos, eos][: len(hello) + 3]]
    )
    texts, counts, finished = decode_rows(tokenizer, rows, [eos])
    assert counts == [len(hello) + 1, len(hello) + 3, 1]
    assert finished == [True, False, True]
    assert texts[0] == "Hello world" and texts[2] == ""
    result = GenerationResult([texts], [counts], [finished], seconds=2.0)
    assert result.total_tokens == sum(counts)
    assert result.tokens_per_second == sum(counts) / 2.0
    assert result.capped_fraction == pytest.approx(1 / 3)


def test_generate_one_is_the_centre_and_close_restores_linear_layers(tiny_lm_copy: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_lm_copy
    space = LoRASpace(init_lora(model, TARGETS, rank=2, method="random"))
    engine = PopulationGenerator(model, tokenizer, space, row_budget=2)
    texts = prompts(tokenizer, 3)
    one = generate_one(engine, None, texts, 8)
    assert one.completions == engine.generate(space.center()[None], texts, 8).completions
    assert len(one.num_tokens[0]) == 3 and one.total_tokens == sum(one.num_tokens[0]) > 0
    assert sum(isinstance(m, PopulationLinear) for m in model.modules()) == 8
    engine.close()
    assert not any(isinstance(m, PopulationLinear) for m in model.modules())
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 2 * 7 + 1
    with pytest.raises(GfoError, match="prompts is empty"):
        PopulationGenerator(model, tokenizer, space).generate(space.center()[None], [], 8)
    with pytest.raises(GfoError, match="row_budget must be >= 1"):
        PopulationGenerator(model, tokenizer, space, row_budget=0)


def test_exported_pissa_adapter_loads_on_the_original_model(
    tiny_lm: tuple[Any, Any], tiny_lm_copy: tuple[Any, Any], tmp_path: Any
) -> None:
    """gfo's export (rank 2r after PiSSA) + plain PEFT on the ORIGINAL base == the batched engine."""
    from peft import PeftModel

    model, tokenizer = tiny_lm_copy
    lora = init_lora(model, TARGETS, rank=4, method="pissa")
    space = SVDSpace(lora)
    candidate = make_population(space, 2, 0.5, seed=7)[1]
    texts = prompts(tokenizer)
    expected = generate_one(
        PopulationGenerator(model, tokenizer, space), candidate, texts, TOKENS
    ).completions[0]
    path = save_peft_adapter(
        space.to_lora(candidate), tmp_path / "adapter", "gfo-tiny", TARGETS, residual=lora
    )

    original = copy.deepcopy(tiny_lm[0])
    loaded = PeftModel.from_pretrained(original, str(path))
    assert loaded.peft_config["default"].r == 8
    assert greedy(loaded, tokenizer, texts) == expected
    assert greedy(tiny_lm[0], tokenizer, texts) != expected


@pytest.mark.parametrize(
    ("kind", "row_budget", "positions"), [("svd", 64, 1024), ("lora", 3, 1024), ("svd", 64, 1)]
)
def test_log_likelihood_equals_peft_per_sequence(
    tiny_lm_copy: tuple[Any, Any], kind: str, row_budget: int, positions: int
) -> None:
    """Teacher-forced log-probabilities from padded batched passes after a shared prefix == each
    candidate's PEFT model on each unpadded prompt + completion alone (fp32); row_budget 3 < B = 4
    splits the prompts, a position budget of 1 runs one row per pass."""
    model, tokenizer = tiny_lm_copy
    lora = init_lora(model, TARGETS, rank=4, method="pissa")
    reference_base = copy.deepcopy(model)
    space: Space = SVDSpace(lora) if kind == "svd" else LoRASpace(lora)
    population = make_population(space, 3, 0.5 if kind == "svd" else 0.2)
    texts = prompts(tokenizer)
    # Completions of different lengths, one a single token: rows end aligned, starts differ.
    answers = ["19", "Blue, like the sea and the sky.", "1 2 3 4 5", "Hello" + tokenizer.eos_token]
    sums, counts = PopulationGenerator(model, tokenizer, space, row_budget=row_budget).log_likelihood(
        population, texts, answers, position_budget=positions
    )
    assert sums.shape == (3, 4) and sums.dtype == torch.float64
    for c in range(3):
        reference = peft_model(copy.deepcopy(reference_base), {"c": space.to_lora(population[c])})
        for p, (text, answer) in enumerate(zip(texts, answers, strict=True)):
            head = tokenizer(text, add_special_tokens=False)["input_ids"]
            tail = tokenizer(answer, add_special_tokens=False)["input_ids"]
            assert counts[p] == len(tail)
            with torch.inference_mode():
                logits = reference(input_ids=torch.tensor([head + tail])).logits[0].float()
            logp = torch.log_softmax(logits[len(head) - 1 : -1], dim=-1)
            expected = logp.gather(-1, torch.tensor(tail).unsqueeze(-1)).sum()
            assert sums[c, p].item() == pytest.approx(expected.item(), abs=1e-3)
    assert (sums < 0).all()
    # Not vacuous: the candidates' adapters change the likelihoods.
    assert (sums[1] - sums[0]).abs().max() > 0.01 and (sums[2] - sums[0]).abs().max() > 0.01


def test_log_likelihood_refuses_mismatched_or_empty_texts(tiny_lm_copy: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_lm_copy
    space = SVDSpace(init_lora(model, TARGETS, rank=4, method="pissa"))
    engine = PopulationGenerator(model, tokenizer, space)
    centre = space.center().unsqueeze(0)
    with pytest.raises(GfoError, match="one completion per prompt"):
        engine.log_likelihood(centre, prompts(tokenizer, 2), ["a"])
    with pytest.raises(GfoError, match="empty prompt or completion"):
        engine.log_likelihood(centre, prompts(tokenizer, 1), [""])


@pytest.mark.parametrize(("kind", "row_budget"), [("svd", 64), ("lora", 2)])
def test_kl_equals_two_full_vocabulary_passes(
    tiny_lm_copy: tuple[Any, Any], kind: str, row_budget: int
) -> None:
    """KL(candidate || reference) summed over each completion's tokens == the same sum from the two
    PEFT models' own log-softmaxes on each unpadded prompt + completion (fp32); row_budget 2 runs
    one prompt's two models per pass."""
    model, tokenizer = tiny_lm_copy
    lora = init_lora(model, TARGETS, rank=4, method="pissa")
    reference_base = copy.deepcopy(model)
    space: Space = SVDSpace(lora) if kind == "svd" else LoRASpace(lora)
    vectors = make_population(space, 2, 0.5 if kind == "svd" else 0.2)
    vector, reference = vectors[1], vectors[0]
    texts = prompts(tokenizer)
    answers = ["19", "Blue, like the sea and the sky.", "1 2 3 4 5", "Hello" + tokenizer.eos_token]
    engine = PopulationGenerator(model, tokenizer, space, row_budget=row_budget)
    sums, counts = engine.kl(vector, reference, texts, answers)
    models = [peft_model(copy.deepcopy(reference_base), {"c": space.to_lora(v)}) for v in (vector, reference)]
    for p, (text, answer) in enumerate(zip(texts, answers, strict=True)):
        head = tokenizer(text, add_special_tokens=False)["input_ids"]
        tail = tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert counts[p] == len(tail)
        with torch.inference_mode():
            mine, theirs = (
                torch.log_softmax(m(input_ids=torch.tensor([head + tail])).logits[0, len(head) - 1 : -1], -1)
                for m in models
            )
        expected = (mine.exp() * (mine - theirs)).sum()
        assert sums[p].item() == pytest.approx(expected.item(), rel=1e-3, abs=1e-5)
    assert (sums > 0).all()  # the candidate differs from the reference on every answer
    same, _ = engine.kl(reference, reference, texts, answers)
    assert same.abs().max() < 1e-5  # a model is at KL 0 from itself
