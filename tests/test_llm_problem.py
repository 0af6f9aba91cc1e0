"""LLMProblem on the tiny model: runs with every algorithm, common random numbers, batched = alone.

The tiny model is a random 2-layer Llama, so its rewards on real tasks are 0; where a fitness has
to tell candidates apart, `TextTask` rewards a deterministic function of the completion's text.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import every_written_file_is_strict_json, rows_of

from gfo.loop import prepare_run_dir, run
from gfo.problem import Context
from gfo.registry import ALGORITHMS
from gfo.spec import resolve
from gfo.threads import one_thread
from gfo_llm.problem import LLMProblem
from problems.arithmetic import Arithmetic, ArithmeticConfig

TINY = ("problem.dtype=fp32", "problem.max_new_tokens=8", "problem.batch_size=2", "problem.eval_limit=4")


class TextTask(Arithmetic):
    """Arithmetic prompts with a reward that separates random completions: a hash of the text."""

    name: ClassVar[str] = "text-reward"

    def reward(self, completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
        return [sum(map(ord, text)) % 101 / 100 for text in completions]


TextProblem = LLMProblem.for_task(TextTask)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # The tiny model's matrices are 64 wide: one thread is faster, and far faster on a busy machine.
    with one_thread():
        yield


@pytest.fixture(autouse=True)
def _restore_grad_mode() -> Iterator[None]:
    # LLMProblem.prepare switches autograd off process-wide; other tests must not inherit that.
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


def run_tiny(out: Path, algo: str, problem: str, model_dir: Path, *overrides: str) -> dict[str, Any]:
    spec = resolve(
        algo,
        problem,
        overrides=[f"problem.model={model_dir}", *TINY, "algo.popsize=4", "run.generations=2", *overrides],
    )
    prepare_run_dir(out, resume=False, force=False)
    return run(spec, out)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tiny_problem_unprepared(model_dir: Path, **settings: Any) -> LLMProblem:
    config = ArithmeticConfig(
        model=str(model_dir), dtype="fp32", max_new_tokens=8, batch_size=3, train_size=10, **settings
    )
    return TextProblem(config)


def tiny_problem(model_dir: Path, **settings: Any) -> LLMProblem:
    problem = tiny_problem_unprepared(model_dir, **settings)
    problem.prepare()
    return problem


@pytest.fixture(scope="module")
def text_problem(tiny_model_dir: Path) -> LLMProblem:
    """A prepared problem shared by the tests that only read it (SVD space, rank 2)."""
    return tiny_problem(tiny_model_dir, rank=2)


# ------------------------------------------------------------------ runs


# CEM refits its spread to the elite: 4 x 0.25 = 1 elite has no spread (NaN), so keep 2.
ALGO_SETTINGS = {"cem": ("algo.parenthood_ratio=0.5",)}


@pytest.mark.parametrize("algo", ALGORITHMS.names())
def test_gsm8k_runs_with_every_algorithm(
    algo: str, tiny_model_dir: Path, gsm8k_data_dir: Path, tmp_path: Path
) -> None:
    summary = run_tiny(
        tmp_path,
        algo,
        "gsm8k",
        tiny_model_dir,
        f"problem.data_dir={gsm8k_data_dir}",
        "problem.eval_every=1",
        *ALGO_SETTINGS.get(algo, ()),
    )
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["generation"] for r in rows] == [0, 1]
    for r in rows:
        numbers = [v for v in r.values() if isinstance(v, float)]
        assert all(math.isfinite(v) for v in numbers), r  # e.g. a NaN step size poisons the population
        assert "nonfinite_total" not in r
        assert r["evaluations"] == 4 * (r["generation"] + 1)
        assert 0.0 <= r["best"] <= 1.0
        assert set(r["heldout"]) == {"center", "best"}
        # 4 candidates x 2 prompts x at most 8 tokens, at least one token each
        assert 8 <= r["generated_tokens"] <= 64
        assert r["completions"] == 8
    # "before": the initial centre on held-out data, once, in generation 0's line and the summary
    assert 0.0 <= rows[0]["heldout_initial"] <= 1.0 and "heldout_initial" not in rows[1]
    assert summary["heldout_initial"] == rows[0]["heldout_initial"]
    assert summary["heldout_best"] >= summary["heldout_initial"]
    assert summary["heldout_best"] == max(
        [summary["heldout_initial"], *(v for r in rows for v in r["heldout"].values())]
    )
    assert summary["peak_rss_mb"] > 0
    assert summary["exported"] == "adapter"
    assert summary["selected_by"] == "heldout"
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16  # PiSSA start: the adapter for the original base has rank 2r
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size > 0


@pytest.mark.parametrize(
    ("space", "init"), [("svd", "pissa"), ("svd", "random"), ("lora", "pissa"), ("lora", "random")]
)
def test_both_spaces_and_inits_run(space: str, init: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    summary = run_tiny(
        tmp_path,
        "pgpe",
        "arithmetic",
        tiny_model_dir,
        f"problem.space={space}",
        f"problem.init={init}",
        "problem.rank=2",
        "problem.eval_every=0",
        "run.generations=1",
    )
    per_module = 2 * 2 if space == "svd" else None  # two factors x r singular values
    modules = 2 * 4  # 2 layers x q, k, v, o
    if per_module is not None:
        assert summary["search_dim"] == modules * per_module
    else:  # A (r x 64) and B (out x r) per module: q, o are 64x64, k, v 32x64 (2 KV heads of 16)
        assert summary["search_dim"] == 2 * (2 * (2 * 64 + 64 * 2) + 2 * (2 * 64 + 32 * 2))
    assert summary["space"] == space and summary["init"] == init
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == (4 if init == "pissa" else 2)


# ------------------------------------------------------------------ common random numbers


def test_minibatch_is_a_pure_function_of_seed_and_generation(
    text_problem: LLMProblem, tiny_model_dir: Path
) -> None:
    problem = text_problem
    again = tiny_problem(tiny_model_dir, rank=3)  # another worker, even with other settings
    assert problem.minibatch(Context(3, 7)) == again.minibatch(Context(3, 7))
    assert problem.minibatch(Context(3, 7)) == problem.minibatch(Context(3, 7))
    assert problem.minibatch(Context(0, 7)) != problem.minibatch(Context(1, 7))
    assert problem.minibatch(Context(0, 7)) != problem.minibatch(Context(0, 8))
    # Consecutive generations walk through seeded shuffles: every item once per epoch (10 = 3+3+3+1).
    epoch = [ex for g in range(4) for ex in problem.minibatch(Context(g, 7))][:10]
    assert sorted(ex["expression"] for ex in epoch) == sorted(ex["expression"] for ex in problem.train)
    assert all(len(problem.minibatch(Context(g, 7))) == 3 for g in range(8))


def test_candidates_share_prompts_and_generations_differ(
    text_problem: LLMProblem, monkeypatch: pytest.MonkeyPatch
) -> None:
    problem = text_problem
    calls: list[tuple[int, list[str]]] = []
    generate = problem.engine.generate

    def spy(vectors: torch.Tensor, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str]) -> Any:
        calls.append((len(vectors), list(prompts)))
        return generate(vectors, prompts, max_new_tokens, stop)

    monkeypatch.setattr(problem.engine, "generate", spy)
    population = problem.initial_center().repeat(4, 1)
    first = problem.evaluate(population, Context(0, 0))
    problem.evaluate(population, Context(1, 0))
    # One call for the whole population, on the generation's mini-batch.
    assert [n for n, _ in calls] == [4, 4]
    assert calls[0][1] == problem.prompts(problem.minibatch(Context(0, 0)))
    assert calls[0][1] != calls[1][1]
    # Identical candidates on the same prompts get identical fitness.
    assert first.fitness.tolist() == [first.fitness[0].item()] * 4


# ------------------------------------------------------------------ batched = sequential


@pytest.mark.parametrize("space", ["svd", "lora"])
def test_batched_population_equals_each_candidate_alone(
    space: str, text_problem: LLMProblem, tiny_model_dir: Path
) -> None:
    problem = text_problem if space == "svd" else tiny_problem(tiny_model_dir, space=space, rank=2)
    generator = torch.Generator().manual_seed(0)
    spread = 1.0 if space == "svd" else 0.3
    population = problem.initial_center() + spread * torch.randn(
        4, problem.solution_length, generator=generator
    )
    context = Context(generation=2, seed=1)
    together = problem.evaluate(population, context)
    alone = [problem.evaluate(population[i : i + 1], context) for i in range(4)]
    assert together.fitness.tolist() == [a.fitness.item() for a in alone]
    # The candidates really differ (the comparison is not between identical outputs).
    assert len(set(together.fitness.tolist())) > 1
    assert together.counters["generated_tokens"] == sum(a.counters["generated_tokens"] for a in alone)


# ------------------------------------------------------------------ forward passes only


def test_evaluation_uses_no_gradients(text_problem: LLMProblem) -> None:
    problem = text_problem
    seen: list[tuple[bool, bool]] = []

    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        seen.append((torch.is_grad_enabled(), output.requires_grad))

    handle = problem.model.get_submodule("model.layers.0.self_attn.q_proj").register_forward_hook(hook)
    try:
        problem.evaluate(problem.initial_center().repeat(2, 1), Context(0, 0))
    finally:
        handle.remove()
    assert seen and not any(grad or requires for grad, requires in seen)
    assert not any(p.requires_grad for p in problem.model.parameters())


# ------------------------------------------------------------------ sizing without weights; close


@pytest.fixture(scope="module")
def warm_start(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-3 PEFT adapter on q_proj and v_proj of the tiny model (random A, B = 0.1)."""
    from gfo_llm.adapters import save_peft_adapter
    from gfo_llm.lora import init_lora
    from gfo_llm.model import load_model

    model, _ = load_model(str(tiny_model_dir), "fp32")
    lora = init_lora(model, ("q_proj", "v_proj"), 3, "random")
    lora = {name: (a, torch.full_like(b, 0.1)) for name, (a, b) in lora.items()}
    path = tmp_path_factory.mktemp("warm") / "adapter"
    return save_peft_adapter(
        lora, path, base_model_id=str(tiny_model_dir), target_modules=("q_proj", "v_proj")
    )


@pytest.mark.parametrize("space", ["svd", "lora"])
@pytest.mark.parametrize(
    "start",
    [
        {"init": "pissa", "rank": 2},
        {"init": "random", "rank": 3, "alpha": 0.5, "target_modules": ("k_proj", "o_proj", "down_proj")},
        {"rank": 3, "alpha": 0.7, "target_modules": ("q_proj", "v_proj")},  # + init_adapter
    ],
    ids=["pissa", "random", "adapter"],
)
def test_solution_length_needs_no_weights_and_equals_the_loaded_space(
    space: str, start: dict[str, Any], tiny_model_dir: Path, warm_start: Path
) -> None:
    from gfo_llm.model import weight_loads

    settings = dict(start, space=space)
    if "init" not in start:
        settings["init_adapter"] = str(warm_start)
    problem = tiny_problem_unprepared(tiny_model_dir, **settings)
    loads = weight_loads()
    dim = problem.solution_length
    assert weight_loads() == loads, "sizing the space read the weights"
    problem.prepare()
    assert weight_loads() == loads + 1
    assert dim == problem.space.dim == problem.solution_length == len(problem.initial_center())
    assert problem.describe()["search_dim"] == dim
    problem.close()


def test_sizing_refuses_what_prepare_refuses(tiny_model_dir: Path, warm_start: Path) -> None:
    from gfo.errors import GfoError
    from gfo_llm.model import weight_loads

    loads = weight_loads()
    for settings, message in [
        (
            {"rank": 40},
            r"^rank 40 exceeds the size of model.layers.0.self_attn.k_proj \(32x64\); use rank <= 32$",
        ),
        (
            {"target_modules": ("qkv",)},
            r"^target_modules qkv match no linear layer of the model; choose from ",
        ),
        (
            {"init_adapter": str(warm_start), "rank": 2, "target_modules": ("q_proj", "v_proj")},
            "has rank 3 but",
        ),
        (
            {"init_adapter": str(warm_start), "rank": 3},
            r"adapts q_proj,v_proj but target_modules is q_proj,k_proj",
        ),
    ]:
        with pytest.raises(GfoError, match=message):
            _ = tiny_problem_unprepared(tiny_model_dir, **settings).solution_length
        with pytest.raises(GfoError, match=message):
            tiny_problem_unprepared(tiny_model_dir, **settings).prepare()
    assert weight_loads() == loads + 4  # only the four prepare() calls


def test_close_releases_the_engine_and_the_model(tiny_model_dir: Path) -> None:
    import gc
    import weakref

    from gfo_llm.layers import PopulationLinear

    problem = tiny_problem(tiny_model_dir, rank=2)
    population = problem.initial_center() + torch.randn(
        3, problem.solution_length, generator=torch.Generator().manual_seed(0)
    )
    before = problem.evaluate(population, Context(0, 0)).fitness
    model = problem.model
    assert model is not None and any(isinstance(m, PopulationLinear) for m in model.modules())
    problem.close()
    assert problem.model is None and problem.tokenizer is None
    assert not any(isinstance(m, PopulationLinear) for m in model.modules()), "the engine kept its layers"
    held = weakref.ref(model)
    del model
    gc.collect()
    assert held() is None, "something still holds the model"
    problem.close()  # twice is fine
    # The space stays; a later evaluation prepares again and computes the same fitness.
    assert problem.solution_length == len(population[0])
    assert torch.equal(problem.evaluate(population, Context(0, 0)).fitness, before)


# ------------------------------------------------------------------ the bundled model


@pytest.mark.slow
def test_bundled_model_runs_pgpe_on_arithmetic(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable, "-m", "gfo.cli", "run", "--algo", "pgpe", "--problem", "arithmetic",
            "--popsize", "4", "--generations", "2", "--out", str(out), "--quiet",
            "--set", "problem.batch_size=4", "--set", "problem.max_new_tokens=32",
            "--set", "problem.eval_every=2", "--set", "problem.eval_limit=8", "--set", "problem.dtype=fp32",
        ],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 2 and "heldout" in rows[1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["search_dim"] == 30 * 4 * 2 * 8  # ESSA: layers x 4 matrices x 2 factors x r
    samples = read_jsonl(out / "samples.jsonl")
    # A real model answers arithmetic with numbers, not random tokens.
    assert any(ch.isdigit() for s in samples for ch in s["completion"])
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_a_non_finite_candidate_gets_nan_fitness(text_problem: LLMProblem) -> None:
    # It would still decode (to an empty or garbage text) and score like a wrong answer; NaN lets the
    # loop count it and rank it last (e.g. CEM with one elite samples NaN populations).
    population = text_problem.initial_center().repeat(3, 1)
    population[1, 0] = float("nan")
    population[2, -1] = float("inf")
    result = text_problem.evaluate(population, Context(0, 0))
    assert math.isfinite(result.fitness[0].item())
    assert torch.isnan(result.fitness[1:]).all()
    assert result.samples[0]["candidate"] == 0


# ------------------------------------------------------------------ fitness=likelihood


def test_likelihood_fitness_is_the_log_probability_per_reference_token(tiny_model_dir: Path) -> None:
    problem = tiny_problem(tiny_model_dir, rank=2, fitness="likelihood")
    generator = torch.Generator().manual_seed(0)
    population = problem.initial_center() + torch.randn(3, problem.solution_length, generator=generator)
    population = torch.cat([population, population[:1]])
    population[3, 0] = float("nan")
    context = Context(generation=1, seed=0)
    result = problem.evaluate(population, context)
    batch = problem.minibatch(context)
    references = [problem.task.reference(ex) + problem.tokenizer.eos_token for ex in batch]
    assert problem.references(batch) == references
    assert all("####" in r for r in references)  # the arithmetic task's worked answers
    sums, tokens = problem.engine.log_likelihood(population[:3], problem.prompts(batch), references)
    assert result.fitness[:3].tolist() == pytest.approx((sums.sum(1) / tokens.sum()).tolist())
    # A random 49k-token model: about log(1 / 49,152) = -10.8 nats per token, and the candidates differ.
    assert all(-20 < f < -5 for f in result.fitness[:3].tolist())
    assert len(set(result.fitness[:3].tolist())) == 3
    assert math.isnan(result.fitness[3].item())
    assert result.counters == {
        "scored_references": 4.0 * len(batch),
        "reference_tokens": 4.0 * tokens.sum().item(),
    }
    assert result.samples[0]["reference"] == references[0]
    assert set(result.samples[0]) == {"candidate", "prompt", "reference", "log_likelihood_per_token"}


def test_a_search_on_likelihood_raises_it_and_still_scores_rewards_held_out(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """SNES on the same 4 items every generation raises their log-likelihood; held-out is rewards."""
    summary = run_tiny(
        tmp_path,
        "snes",
        "arithmetic",
        tiny_model_dir,
        "problem.fitness=likelihood",
        "problem.rank=2",
        "problem.train_size=4",
        "problem.batch_size=4",
        "problem.stdev=1.0",
        "problem.eval_every=2",
        "algo.popsize=8",
        "run.generations=8",
    )
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    means = [r["mean"] for r in rows]
    assert means[-1] > means[0] + 0.1, means
    assert rows[-1]["scored_references_total"] == 8 * 4 * 8
    assert "completions" not in rows[-1]  # nothing was generated to train on
    # The held-out evaluation generated and scored rewards (0 or 1 on arithmetic), not likelihoods.
    heldout = [r["heldout"] for r in rows if "heldout" in r]
    assert heldout and all(0.0 <= h["center"] <= 1.0 for h in heldout)
    assert summary["best"] < 0


def test_likelihood_needs_references_and_the_transformers_backend(tiny_model_dir: Path) -> None:
    from gfo.errors import ConfigError, GfoError

    class Unreferenced(TextTask):
        def reference(self, example: Any) -> None:  # type: ignore[override]
            return None

    with pytest.raises(ConfigError, match=r"needs problem\.backend=transformers"):
        ArithmeticConfig(fitness="likelihood", backend="vllm")
    with pytest.raises(ConfigError, match=r"problem\.fitness must be one of reward, likelihood"):
        ArithmeticConfig(fitness="loss")  # type: ignore[arg-type]
    problem = LLMProblem.for_task(Unreferenced)(
        ArithmeticConfig(model=str(tiny_model_dir), fitness="likelihood", train_size=10)
    )
    with pytest.raises(GfoError, match=r"gives no reference completions.*use problem\.fitness=reward"):
        problem.prepare()
    assert problem.model is None  # refused before loading the model


# ------------------------------------------------------------------ rewards we do not control

RELEASE = threading.Event()  # set at the end of a test: lets the abandoned "hung" reward threads end


class FakeTask:
    """Just what `guarded_reward` uses of a task."""

    name = "fake-task"

    def __init__(self, reward: Any) -> None:
        self.reward = reward


def hangs(completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
    RELEASE.wait(60)
    return [1.0] * len(completions)


def raises_on_item_1(completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
    return [1.0 / (e["i"] != 1) for e in examples]  # ZeroDivisionError whenever item 1 is in the batch


EXAMPLES = [{"i": 0}, {"i": 1}, {"i": 2}]
NAN = math.nan


@pytest.mark.parametrize(
    ("reward", "rewards", "problem"),
    [
        (lambda c, e: [0.5, 0.0, 1.0], [0.5, 0.0, 1.0], None),
        (
            raises_on_item_1,
            [NAN] * 3,
            "raised ZeroDivisionError: float division by zero on item 1 of the batch {'i': 1}",
        ),
        (hangs, [NAN] * 3, "took more than 0.2 s on the batch of 3 item(s) (the call was abandoned)"),
        (
            lambda c, e: [1.0, NAN, math.inf],
            [1.0, NAN, NAN],
            "returned nan on item 1 of the batch {'i': 1} (and 1 more)",
        ),
        (lambda c, e: [1.0], [NAN] * 3, "returned 1 value(s) for 3 completion(s)"),
        (
            lambda c, e: [None, 1.0, 1.0],
            [NAN] * 3,
            "returned [None, 1.0, 1.0], not one number per completion, on the batch of 3 item(s)",
        ),
        (
            lambda c, e: 1.0,
            [NAN] * 3,
            "returned 1.0, not one number per completion, on the batch of 3 item(s)",
        ),
    ],
    ids=["fine", "raises", "hangs", "non-finite", "too-short", "not-numbers", "not-a-list"],
)
def test_a_failing_reward_gives_nan_and_says_where(
    reward: Any, rewards: list[float], problem: str | None
) -> None:
    """Off the main thread too (Ray actors, a thread pool): no signal is involved."""
    from concurrent.futures import ThreadPoolExecutor

    from gfo_llm.reward_guard import guarded_reward

    RELEASE.clear()
    try:
        for call in (guarded_reward, lambda *a: ThreadPoolExecutor(1).submit(guarded_reward, *a).result()):
            got, said = call(FakeTask(reward), ["a", "b", "c"], EXAMPLES, 0.2)
            assert said == problem
            assert [("nan" if math.isnan(v) else v) for v in got] == [
                ("nan" if math.isnan(v) else v) for v in rewards
            ]
    finally:
        RELEASE.set()


class FlakyTask(TextTask):
    """TextTask, except for the batch calls `PLAN` names (1-based, counting calls of 2+ items):
    it raises (on one item), hangs, returns NaN for one item or returns too few values."""

    name: ClassVar[str] = "flaky-reward"
    PLAN: ClassVar[dict[int, str]] = {2: "raise", 3: "hang", 4: "nan", 8: "short"}
    calls: ClassVar[int] = 0
    poisoned: ClassVar[str | None] = None

    def reward(self, completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
        if len(completions) > 1:
            FlakyTask.calls += 1
            plan = self.PLAN.get(FlakyTask.calls)
            FlakyTask.poisoned = examples[1]["expression"] if plan == "raise" else None
            if plan == "hang":
                RELEASE.wait(60)
            if plan == "nan":
                return [math.nan, *super().reward(completions, examples)[1:]]
            if plan == "short":
                return super().reward(completions, examples)[:1]
        if any(e["expression"] == FlakyTask.poisoned for e in examples):
            raise ValueError(f"cannot parse {FlakyTask.poisoned!r}")
        return super().reward(completions, examples)


def test_a_run_survives_a_reward_that_raises_hangs_or_returns_garbage(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Calls: 1 the initial held-out score; 2-5 generation 0's candidates (3 of 4 fail); 6-7 its
    held-out scores; 8-11 generation 1's candidates (the first fails)."""
    from gfo.registry import PROBLEMS

    if "test-flaky-reward" not in PROBLEMS.names():
        PROBLEMS.register("test-flaky-reward", LLMProblem.for_task(FlakyTask))
    FlakyTask.calls, FlakyTask.poisoned = 0, None
    RELEASE.clear()
    try:
        with pytest.warns(UserWarning) as caught:
            summary = run_tiny(
                tmp_path, "pgpe", "test-flaky-reward", tiny_model_dir,
                "problem.eval_every=1", "problem.reward_timeout_s=0.3",
            )  # fmt: skip
    finally:
        RELEASE.set()
    said = [str(w.message) for w in caught if "flaky-reward: " in str(w.message)]
    assert len(said) == 4, said
    assert said[0].startswith("flaky-reward: the reward of candidate 0 in generation 0 raised ValueError: ")
    assert " on item 1 of the batch {'expression': " in said[0]
    assert said[1].startswith("flaky-reward: the reward of candidate 1 in generation 0 took more than 0.3 s")
    assert said[2].startswith(
        "flaky-reward: the reward of candidate 2 in generation 0 returned nan on item 0"
    )
    assert said[3].startswith("flaky-reward: the reward of candidate 0 in generation 1 returned 1 value(s)")
    assert all(
        s.endswith(f"that candidate gets NaN ({i} reward failure(s) so far)") for i, s in enumerate(said, 1)
    )
    # The run went on, counted each failure, and kept the good candidates.
    assert summary["stop_reason"] == "generations" and summary["generations"] == 2
    rows = rows_of(tmp_path)
    assert [(r["finite"], r["nonfinite"], r["reward_failures"]) for r in rows] == [
        (1, 3, 1.0 * 3),
        (3, 1, 1.0),
    ]
    assert summary["counters"]["reward_failures"] == 4 and summary["nonfinite"] == 4
    assert rows[0]["best"] is not None and summary["heldout_best"] is not None
    assert every_written_file_is_strict_json(tmp_path) >= 4  # metrics, samples, summary, adapter config
