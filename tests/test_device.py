"""Where the LLM machinery runs: `problem.device`, rows in flight sized for the device, and the
population engine, teacher-forced scoring, `gfo eval` and `gfo sft` on every device this machine
has. The CUDA cases carry the `gpu` marker (`pytest -m gpu`); without CUDA they are skipped."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import gfo

from gfo.errors import ConfigError, GfoError
from gfo.rundir import memory_mb
from gfo_llm.adapters import peft_model
from gfo_llm.batched import GPU_MAX_ROWS, PopulationGenerator, rows_that_fit
from gfo_llm.config import LLMConfig
from gfo_llm.lora import init_lora
from gfo_llm.model import chat_prompt, resolve_device
from gfo_llm.spaces import LoRASpace, Space, SVDSpace

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
QUESTIONS = ["What is 12 + 7?", "Name a colour.", "Count to five, please.", "Why is the sky blue?"]
TOKENS = 12
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest) -> str:
    if request.param == "cuda" and NO_CUDA:
        pytest.skip("no CUDA device here")
    return str(request.param)


@pytest.fixture(autouse=True)
def _restore_grad_mode() -> Any:
    enabled = torch.is_grad_enabled()  # LLMProblem.prepare switches autograd off process-wide
    yield
    torch.set_grad_enabled(enabled)


def population(space: Space, size: int, spread: float) -> torch.Tensor:
    noise = torch.randn(size, space.dim, generator=torch.Generator().manual_seed(0))
    vectors = space.center() + spread * noise
    vectors[0] = space.center()
    return vectors


def peft_greedy(model: Any, tokenizer: Any, texts: list[str], device: str) -> list[list[int]]:
    """Each prompt alone through plain `generate` (no padding), its new tokens up to the first EOS."""
    out: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
        with torch.inference_mode():
            generated = model.generate(
                input_ids=ids, max_new_tokens=TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )[0, ids.shape[1] :].tolist()
        stop = next((i for i, t in enumerate(generated) if t == tokenizer.eos_token_id), None)
        out.append(generated if stop is None else generated[: stop + 1])
    return out


# ------------------------------------------------------------------ the setting


def test_auto_is_the_cpu_without_cuda_and_names_are_checked() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(GfoError, match=r"device must be auto, cpu, cuda or cuda:N; got 'gpu', use auto"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match=r"problem.device must be auto, cpu, cuda or cuda:N; got 'cuda:x'"):
        LLMConfig(device="cuda:x")
    with pytest.raises(ConfigError, match=r"problem.row_budget must be >= 1; got 0, or none"):
        LLMConfig(row_budget=0)
    assert LLMConfig(device="cuda:1").device == "cuda:1"  # valid as a name on any machine (a Ray GPU actor)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line_and_exit_2(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        GfoError, match=r"^device 'cuda' asks for CUDA, but torch .* sees no CUDA device here"
    ):
        resolve_device("cuda")
    code, err = gfo(
        "run", "--algo", "pgpe", "--problem", "arithmetic", "--out", str(tmp_path / "run"), "--quiet",
        "--set", f"problem.model={tiny_model_dir}", "--set", "problem.device=cuda:0",
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: device 'cuda:0' asks for CUDA, but torch {torch.__version__} sees no CUDA device here; "
        "use device=cpu or auto, or install a CUDA build of torch"
    ]


def test_rows_that_fit_follow_the_kv_cache_of_the_model_at_hand(tiny_lm: tuple[Any, Any]) -> None:
    model, _ = tiny_lm  # 2 layers, 2 KV heads of 16, float32
    svd = SVDSpace(init_lora(copy.deepcopy(model), TARGETS, rank=4, method="random"))
    kv_per_position = 2 * 2 * 2 * 16 * 4  # keys and values x layers x heads x head_dim x bytes
    per_row = 2 * kv_per_position * 100 + 2 * 4 * model.config.vocab_size
    assert rows_that_fit(10 * per_row, model, svd, 100) == 8  # 80% of the free memory
    assert rows_that_fit(10 * per_row, model, svd, 200) < 8  # longer rows, fewer of them
    assert rows_that_fit(0, model, svd, 100) == 1
    assert rows_that_fit(10**15, model, svd, 100) == GPU_MAX_ROWS
    lora = LoRASpace(init_lora(copy.deepcopy(model), TARGETS, rank=4, method="random"))
    assert rows_that_fit(10 * per_row, model, lora, 100) < 8  # each row may carry its own factors


# ------------------------------------------------------------------ the engine on each device


@pytest.mark.parametrize(("kind", "spread"), [("svd", 0.5), ("lora", 0.2)])
def test_engine_equals_peft_per_candidate_on_the_device(
    tiny_lm_copy: tuple[Any, Any], device: str, kind: str, spread: float
) -> None:
    model, tokenizer = tiny_lm_copy
    model.to(device)
    lora = init_lora(model, TARGETS, rank=4, method="pissa")  # PiSSA's SVD runs where the weights are
    reference_base = copy.deepcopy(model)
    space: Space = SVDSpace(lora) if kind == "svd" else LoRASpace(lora)
    vectors = population(space, 3, spread)
    texts = [chat_prompt(tokenizer, q) for q in QUESTIONS]
    engine = PopulationGenerator(model, tokenizer, space, row_budget=None)
    assert engine.device.type == device
    tokens, finished, stats = engine.generate_ids(
        vectors, [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], TOKENS
    )
    assert engine.row_budget == 64 if device == "cpu" else 1 <= engine.row_budget <= GPU_MAX_ROWS
    assert stats.peak_rows <= 12
    for c in range(3):
        reference = peft_model(copy.deepcopy(reference_base), {"c": space.to_lora(vectors[c])})
        assert tokens[c] == peft_greedy(reference, tokenizer, texts, device)
    assert tokens[1] != tokens[0] and tokens[2] != tokens[0]
    # generate() is generate_ids() plus the tokenizer, on the same rows
    texts_out = engine.generate(vectors, texts, TOKENS).completions
    assert texts_out == [tokenizer.batch_decode(rows, skip_special_tokens=True) for rows in tokens]
    assert all(len(row) == len(QUESTIONS) for row in finished)


def test_log_likelihood_on_the_device_equals_the_cpu(tiny_lm: tuple[Any, Any], device: str) -> None:
    results = []
    for where in ("cpu", device):
        model, tokenizer = copy.deepcopy(tiny_lm[0]).to(where), tiny_lm[1]
        space = SVDSpace(init_lora(model, TARGETS, rank=4, method="pissa"))
        texts = [chat_prompt(tokenizer, q) for q in QUESTIONS]
        sums, counts = PopulationGenerator(model, tokenizer, space).log_likelihood(
            population(space, 3, 0.5), texts, ["19", "Blue.", "1 2 3", "Light scatters."]
        )
        assert sums.device.type == "cpu" and counts.device.type == "cpu"
        results.append(sums)
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-4)
    assert (results[0][1] - results[0][0]).abs().max() > 0.01


def test_out_of_memory_halves_the_rows_in_flight_and_loses_no_call(tiny_lm_copy: tuple[Any, Any]) -> None:
    """A forward pass of more than 4 rows raises torch's out-of-memory error (what CUDA raises when
    the KV cache does not fit): the call runs again at 8 rows, then 4, and gives the tokens a
    4-row engine gives; the smaller size holds for the next call."""
    model, tokenizer = tiny_lm_copy
    space = SVDSpace(init_lora(model, TARGETS, rank=4, method="pissa"))
    vectors = population(space, 3, 0.5)
    texts = [chat_prompt(tokenizer, q) for q in QUESTIONS]
    expected = PopulationGenerator(copy.deepcopy(model), tokenizer, space, row_budget=4).generate(
        vectors, texts, TOKENS
    )
    engine = PopulationGenerator(model, tokenizer, space, row_budget=16)
    seen: list[int] = []

    def small_memory(module: Any, args: Any, kwargs: Any) -> None:
        rows = kwargs["input_ids"].shape[0]
        seen.append(rows)
        if rows > 4:
            raise torch.OutOfMemoryError(f"tried to allocate the KV cache of {rows} rows")

    hook = model.register_forward_pre_hook(small_memory, with_kwargs=True)
    try:
        with pytest.warns(UserWarning, match=r"out of memory on cpu with 16 rows in flight; .* again with 8"):
            result = engine.generate(vectors, texts, TOKENS)
        assert result.completions == expected.completions
        assert engine.row_budget == 4 and max(seen) == 12
        seen.clear()
        assert engine.generate(vectors, texts, TOKENS).completions == expected.completions
        assert max(seen) == 4  # no second failure: the halved size is kept
        engine._ceiling, engine.requested_budget = 1, 1
        with pytest.raises(torch.OutOfMemoryError):  # one row does not fit either: nothing to halve
            model.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(torch.OutOfMemoryError()))
            engine.generate(vectors, texts, TOKENS)
    finally:
        hook.remove()


def test_memory_metrics_name_the_gpu_only_where_cuda_was_used() -> None:
    memory = memory_mb()
    assert memory["rss_mb"] > 0 and memory["peak_rss_mb"] >= memory["rss_mb"]
    assert ("peak_gpu_mb" in memory) == torch.cuda.is_initialized()


# ------------------------------------------------------------------ run, eval and sft on each device


def test_run_eval_and_sft_on_the_device(tiny_model_dir: Path, tmp_path: Path, device: str) -> None:
    model = ("--set", f"problem.model={tiny_model_dir}", "--set", f"problem.device={device}")
    tiny = ("--set", "problem.dtype=fp32", "--set", "problem.max_new_tokens=6", "--set", "problem.rank=4")
    code, err = gfo(
        "run", "--algo", "pgpe", "--problem", "arithmetic", "--popsize", "4", "--generations", "2",
        "--out", str(tmp_path / "run"), "--quiet", *model, *tiny, "--set", "problem.batch_size=2",
        "--set", "problem.eval_every=2", "--set", "problem.eval_limit=2",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["device"] == str(resolve_device(device))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["rows_in_flight"] >= 1 for r in rows)
    assert ("peak_gpu_mb" in rows[-1]) == (device == "cuda")
    code, err = gfo(
        "eval", "--problem", "arithmetic", "--adapter", str(tmp_path / "run" / "adapter"), "--limit", "3",
        "--out", str(tmp_path / "eval"), "--quiet", *model, *tiny,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["device"] == summary["device"]
    code, err = gfo(
        "sft", "--problem", "arithmetic", "--out", str(tmp_path / "sft"), "--limit", "4", "--batch-size", "4",
        "--quiet", *model, "--set", "problem.rank=4",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "sft" / "sft.json").read_text())["device"] == summary["device"]
