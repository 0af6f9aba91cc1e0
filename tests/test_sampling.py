"""Seeded sampling in the population engine (gfo_llm.sampling) and `gfo eval --samples`.

Every row draws from a generator seeded by (run seed, generation, prompt, sample) only: candidates
share their random numbers (common random numbers), a population split over workers draws what it
draws whole, and a plain PEFT model with the same generators samples the engine's tokens.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import gfo

from gfo.errors import ConfigError, GfoError
from gfo.problem import Context
from gfo.registry import PROBLEMS
from gfo.stats import pass_at_k
from gfo_llm.adapters import peft_model
from gfo_llm.batched import PopulationGenerator, decode_rows
from gfo_llm.config import LLMConfig
from gfo_llm.evaluate import SAMPLE_TEMPERATURE, evaluate
from gfo_llm.lora import init_lora
from gfo_llm.model import chat_prompt
from gfo_llm.problem import LLMProblem
from gfo_llm.sampling import Sampling, SeededSampler, generator, row_seed, sample_tokens
from gfo_llm.spaces import LoRASpace, Space, SVDSpace
from problems.arithmetic import Arithmetic, ArithmeticConfig

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TARGETS = ("q_proj", "v_proj")
QUESTIONS = ["Hi", "What is 12 + 7?", "Name a colour.", "Count to five, please, and then stop."]
TOKENS = 12
SAMPLED = Sampling(temperature=1.0, samples=2, seed=5, generation=3)


def build(model: Any, kind: str = "svd", size: int = 4) -> tuple[Space, torch.Tensor]:
    """A space and `size` candidates, the last a copy of the first (the same weights, another row)."""
    lora = init_lora(model, TARGETS, rank=4, method="pissa" if kind == "svd" else "random")
    space: Space = SVDSpace(lora) if kind == "svd" else LoRASpace(lora)
    noise = torch.randn(size, space.dim, generator=torch.Generator().manual_seed(1))
    population = space.center() + (0.5 if kind == "svd" else 0.3) * noise
    population[-1] = population[0]
    return space, population


def texts(tokenizer: Any) -> list[str]:
    return [chat_prompt(tokenizer, q) for q in QUESTIONS]


# ---------------------------------------------------------------- the draw itself


def test_row_seed_depends_on_the_four_coordinates_only_and_is_stable() -> None:
    coordinates = [(s, g, p, k) for s in range(3) for g in range(3) for p in range(4) for k in range(3)]
    assert len({row_seed(*c) for c in coordinates}) == len(coordinates)
    assert all(0 <= row_seed(*c) < 2**63 for c in coordinates)
    # A resumed run, another process or Python version must draw what the first one drew.
    assert row_seed(0, 0, 0, 0) == 1417190625962313674
    sampling = Sampling(temperature=1.0, samples=3, seed=2, generation=7, first_prompt=10)
    assert sampling.seeds(2, 2) == [row_seed(2, 7, 10 + p, s) for p in range(2) for s in range(3)] * 2


def test_sample_tokens_draws_from_the_tempered_nucleus() -> None:
    """Frequencies of 6,000 draws match softmax(logits / T), and the nucleus renormalized."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None]
    g = generator(0)
    draws = 6000

    def frequencies(temperature: float, top_p: float) -> torch.Tensor:
        counts = torch.zeros(4)
        for _ in range(draws):
            counts[sample_tokens(logits, [g], temperature, top_p)] += 1
        return counts / draws

    tolerance = 4 * math.sqrt(0.25 / draws)  # 4 standard errors at worst
    assert torch.allclose(frequencies(1.0, 1.0), probs, atol=tolerance)
    tempered = (probs.log() / 0.5).softmax(-1)
    assert torch.allclose(frequencies(0.5, 1.0), tempered, atol=tolerance)
    # top_p 0.7: token 1 brings the mass to 0.8 >= 0.7, tokens 2 and 3 are cut.
    nucleus = torch.tensor([0.625, 0.375, 0.0, 0.0])
    assert torch.allclose(frequencies(1.0, 0.7), nucleus, atol=tolerance)


def test_a_rows_draws_do_not_depend_on_the_other_rows() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    together = sample_tokens(logits, [generator(s) for s in (1, 2, 3)], 1.0)
    alone = [int(sample_tokens(logits[i : i + 1], [generator(s)], 1.0)) for i, s in enumerate((1, 2, 3))]
    assert together.tolist() == alone


# ---------------------------------------------------------------- the engine


@pytest.mark.parametrize(("temperature", "top_p"), [(1e-6, 1.0), (1.0, 1e-6)])
def test_near_zero_temperature_or_tiny_top_p_is_greedy(
    tiny_lm_copy: tuple[Any, Any], temperature: float, top_p: float
) -> None:
    model, tokenizer = tiny_lm_copy
    space, population = build(model)
    engine = PopulationGenerator(model, tokenizer, space, row_budget=5)
    greedy = engine.generate(population, texts(tokenizer), TOKENS)
    sampled = engine.generate(
        population, texts(tokenizer), TOKENS, sampling=Sampling(temperature=temperature, top_p=top_p, seed=9)
    )
    assert sampled.token_ids == greedy.token_ids
    assert sampled.completions == greedy.completions


def test_same_seed_same_samples_whole_split_or_rebuilt(tiny_lm: tuple[Any, Any]) -> None:
    """One call, two halves (two Ray actors), other rows in flight, the hf engine and a new engine
    on a new model (a resumed run) all draw the same tokens; identical candidates draw identically."""
    model, tokenizer = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    space, population = build(model)
    engine = PopulationGenerator(model, tokenizer, space, row_budget=64)
    whole = engine.generate(population, texts(tokenizer), TOKENS, sampling=SAMPLED)
    assert len(whole.completions[0]) == len(QUESTIONS) * SAMPLED.samples

    engine.row_budget = engine.requested_budget = 3  # other rows in flight, refills
    halves = [
        engine.generate(population[i : i + 2], texts(tokenizer), TOKENS, sampling=SAMPLED) for i in (0, 2)
    ]
    assert [row for half in halves for row in half.token_ids or []] == whole.token_ids
    engine.engine = "hf"
    assert (
        engine.generate(population, texts(tokenizer), TOKENS, sampling=SAMPLED).token_ids == whole.token_ids
    )

    model2 = copy.deepcopy(tiny_lm[0])
    space2, population2 = build(model2)
    rebuilt = PopulationGenerator(model2, tokenizer, space2, row_budget=7)
    assert (
        rebuilt.generate(population2, texts(tokenizer), TOKENS, sampling=SAMPLED).token_ids == whole.token_ids
    )

    # Common random numbers: the last candidate is the first one's copy, so it draws its samples.
    assert whole.completions[-1] == whole.completions[0]
    # Not vacuous: other candidates say other things under the same random numbers.
    assert whole.completions[1] != whole.completions[0] and whole.completions[2] != whole.completions[0]


@pytest.mark.parametrize("kind", ["svd", "lora"])
def test_peft_model_with_the_same_generators_samples_the_engines_tokens(
    tiny_lm_copy: tuple[Any, Any], kind: str
) -> None:
    """Each candidate alone through PEFT and `model.generate` with `SeededSampler` (fp32)."""
    from transformers import GenerationConfig, LogitsProcessorList

    model, tokenizer = tiny_lm_copy
    space, population = build(model, kind, size=3)
    reference_base = copy.deepcopy(model)  # after init_lora: holds the PiSSA residual like the engine's
    prompts = texts(tokenizer)
    result = PopulationGenerator(model, tokenizer, space, row_budget=6).generate(
        population, prompts, TOKENS, sampling=SAMPLED
    )
    repeated = [p for p in prompts for _ in range(SAMPLED.samples)]
    encoded = tokenizer(repeated, padding=True, return_tensors="pt", add_special_tokens=False)
    config = GenerationConfig(
        max_new_tokens=TOKENS,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    for c, vector in enumerate(population):
        peft = peft_model(copy.deepcopy(reference_base), {"c": space.to_lora(vector)})
        sampler = SeededSampler(SAMPLED, SAMPLED.seeds(1, len(prompts)))
        with torch.inference_mode():
            out = peft.generate(
                **encoded, generation_config=config, logits_processor=LogitsProcessorList([sampler])
            )
        expected = decode_rows(tokenizer, out[:, encoded["input_ids"].shape[1] :], [tokenizer.eos_token_id])[
            0
        ]
        assert result.completions[c] == expected


def test_sample_index_generation_and_seed_change_the_draws(tiny_lm_copy: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_lm_copy
    space, population = build(model, size=1)
    engine = PopulationGenerator(model, tokenizer, space)
    base = engine.generate(population, texts(tokenizer), TOKENS, sampling=SAMPLED).completions[0]
    first, second = base[0::2], base[1::2]  # sample 0 and sample 1 of each prompt
    assert sum(a != b for a, b in zip(first, second, strict=True)) >= len(QUESTIONS) - 1
    for other in (
        Sampling(temperature=1.0, samples=2, seed=5, generation=4),
        Sampling(temperature=1.0, samples=2, seed=6, generation=3),
    ):
        again = engine.generate(population, texts(tokenizer), TOKENS, sampling=other).completions[0]
        assert sum(a != b for a, b in zip(again, base, strict=True)) >= len(base) - 1


# ---------------------------------------------------------------- the problem: fitness over k samples


class TextTask(Arithmetic):
    """Arithmetic prompts, a reward that tells random completions apart: a hash of the text."""

    name: ClassVar[str] = "sampling-text-reward"

    def reward(self, completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
        return [sum(map(ord, text)) % 101 / 100 for text in completions]


class ParityTask(TextTask):
    """All or nothing, right for about half the texts: pass@k and pass@1 then differ."""

    name: ClassVar[str] = "sampling-parity-reward"

    def reward(self, completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
        return [float(sum(map(ord, text)) % 2 == 0) for text in completions]


PARITY = "test-sampling-parity"


@pytest.fixture(autouse=True)
def _restore_grad_mode() -> Iterator[None]:
    enabled = torch.is_grad_enabled()  # LLMProblem.prepare switches autograd off process-wide
    yield
    torch.set_grad_enabled(enabled)


def test_fitness_is_the_mean_reward_over_k_samples(tiny_model_dir: Path) -> None:
    config = ArithmeticConfig(
        model=str(tiny_model_dir), dtype="fp32", max_new_tokens=8, batch_size=3, train_size=10, rank=2,
        temperature=1.0, samples_per_prompt=3,
    )  # fmt: skip
    problem = LLMProblem.for_task(TextTask)(config)
    problem.prepare()
    population = problem.initial_center() + torch.randn(
        4, problem.solution_length, generator=torch.Generator().manual_seed(0)
    )
    context = Context(generation=2, seed=1)
    evaluation = problem.evaluate(population, context)
    assert evaluation.counters["completions"] == 4 * 3 * 3

    sampling = problem.sampling(context)
    assert sampling is not None and (sampling.seed, sampling.generation, sampling.samples) == (1, 2, 3)
    batch = problem.minibatch(context)
    result = problem.engine.generate(
        population, problem.prompts(batch), 8, problem.task.stop, sampling=sampling
    )
    # Per sample index s, the k = 3 columns' rewards; the fitness is the mean over s of their means.
    per_sample = torch.tensor(
        [
            [sum(problem.task.reward(result.completions[c][s::3], batch)) / 3 for s in range(3)]
            for c in range(4)
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(evaluation.fitness, per_sample.mean(dim=1))
    assert len(set(per_sample[0].tolist())) > 1  # the samples of one prompt differ
    # Two actors with two candidates each compute the same fitness; so does a resumed run.
    halves = [problem.evaluate(population[i : i + 2], context).fitness for i in (0, 2)]
    assert torch.cat(halves).tolist() == evaluation.fitness.tolist()
    # Greedy (the default) is no Sampling at all: the engine's greedy path.
    greedy = LLMProblem.for_task(TextTask)(ArithmeticConfig(model=str(tiny_model_dir), train_size=10))
    assert greedy.sampling(context) is None


# ---------------------------------------------------------------- settings and the CLI


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"temperature": -0.5},
            "problem.temperature must be a number >= 0; got -0.5, use e.g. 0.8 (0: greedy)",
        ),
        ({"temperature": math.nan}, "problem.temperature must be a number >= 0; got nan"),
        ({"temperature": 1.0, "top_p": 0.0}, "problem.top_p must be in (0, 1]; got 0.0"),
        ({"temperature": 1.0, "top_p": 1.5}, "problem.top_p must be in (0, 1]; got 1.5"),
        ({"temperature": 1.0, "samples_per_prompt": 0}, "problem.samples_per_prompt must be >= 1; got 0"),
        (
            {"samples_per_prompt": 4},
            "problem.samples_per_prompt=4 needs sampling, but problem.temperature is 0",
        ),
        ({"top_p": 0.9}, "problem.top_p=0.9 needs sampling, but problem.temperature is 0"),
        (
            {"temperature": 1.0, "fitness": "likelihood"},
            "problem.temperature=1.0 needs problem.fitness=reward",
        ),
    ],
)
def test_sampling_settings_are_validated(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        LLMConfig(**settings)
    assert str(error.value).startswith(message)
    with pytest.raises(GfoError, match="temperature > 0"):
        Sampling(temperature=0.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("run", "--algo", "pgpe", "--problem", "arithmetic", "--set", "problem.temperature=-1"),
            "error: problem.temperature must be a number >= 0; got -1.0, use e.g. 0.8 (0: greedy)",
        ),
        (
            ("run", "--algo", "pgpe", "--problem", "arithmetic", "--set", "problem.samples_per_prompt=4"),
            "error: problem.samples_per_prompt=4 needs sampling, but problem.temperature is 0 (greedy: every "
            "sample the same); set problem.temperature, e.g. 0.8, or drop it",
        ),
        (
            ("run", "--algo", "pgpe", "--problem", "arithmetic", "--set", "problem.temperature=1",
             "--set", "problem.top_p=2"),
            "error: problem.top_p must be in (0, 1]; got 2.0, use e.g. 0.95 (1.0: all tokens)",
        ),
        (
            ("eval", "--problem", "arithmetic", "--samples", "-1"),
            "error: --samples must be >= 0; got -1, use e.g. 4 (0: greedy only)",
        ),
        (
            ("eval", "--problem", "arithmetic", "--samples", "4", "--compare", "base"),
            "error: --samples scores one model, --compare pairs greedy answers; "
            "run gfo eval --samples on each",
        ),
    ],
)  # fmt: skip
def test_bad_sampling_values_are_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    code, err = gfo(*args)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [message]


# ---------------------------------------------------------------- gfo eval --samples


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 0, 1, 0.0),
        (5, 5, 3, 1.0),
        (4, 1, 4, 1.0),
        (4, 0, 4, 0.0),
        (10, 3, 1, 0.3),
        (10, 3, 2, 1 - 21 / 45),
    ],
)
def test_pass_at_k_is_chen_et_als_unbiased_estimator(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-15)


def test_pass_at_k_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="k must be in"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="c must be in"):
        pass_at_k(3, 4, 1)


def test_eval_samples_reports_pass_at_1_and_pass_at_k(tiny_model_dir: Path, tmp_path: Path) -> None:
    if PARITY not in PROBLEMS.names():
        PROBLEMS.register(PARITY, LLMProblem.for_task(ParityTask))
    common = ("--set", f"problem.model={tiny_model_dir}", "--set", "problem.dtype=fp32",
              "--set", "problem.max_new_tokens=8", "--limit", "8", "--quiet")  # fmt: skip
    code, err = gfo(
        "eval", "--problem", PARITY, *common, "--samples", "4", "--seed", "3", "--out", str(tmp_path / "a")
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "a" / "eval.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "a" / "completions.jsonl").read_text().splitlines()]
    sampled = summary["sampled"]
    assert (sampled["k"], sampled["seed"], sampled["temperature"]) == (4, 3, SAMPLE_TEMPERATURE)
    assert all(len(r["samples"]) == 4 for r in records)
    correct = [sum(s["reward"] >= 1 for s in r["samples"]) for r in records]
    assert sampled["pass_at_1"] == pytest.approx(sum(correct) / (4 * len(records)))
    assert sampled["pass_at_k"] == pytest.approx(sum(c > 0 for c in correct) / len(records))
    assert 0 < sampled["pass_at_1"] < sampled["pass_at_k"]  # not vacuous: some items mixed
    assert f"pass@1 {sampled['pass_at_1']:.4f}" in err and f"pass@4 {sampled['pass_at_k']:.4f}" in err
    assert f"greedy accuracy {summary['accuracy']:.4f}" in err

    # The greedy numbers are those of a plain eval; the samples' seeds follow the item's index in
    # the split, not the chunk it was generated in, and problem.temperature is used when set.
    config = ArithmeticConfig(model=str(tiny_model_dir), dtype="fp32", max_new_tokens=8)
    plain = evaluate(PARITY, config, limit=8)
    assert (plain["accuracy"], plain["mean_reward"]) == (summary["accuracy"], summary["mean_reward"])
    evaluate(PARITY, config, limit=6, offset=2, chunk_size=3, samples=4, seed=3, out=tmp_path / "b")
    later = [json.loads(line) for line in (tmp_path / "b" / "completions.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in later] == [r["samples"] for r in records[2:]]
    hot = evaluate(
        PARITY,
        ArithmeticConfig(model=str(tiny_model_dir), dtype="fp32", max_new_tokens=8, temperature=1.3),
        limit=2,
        samples=2,
    )
    assert hot["sampled"]["temperature"] == 1.3
