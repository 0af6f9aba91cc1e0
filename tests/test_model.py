"""Model loading: bundled GGUF, conversion cache, local directories, tiny test model, chat prompts."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from gfo.errors import GfoError
from gfo_llm import model as model_module
from gfo_llm.config import LLMConfig
from gfo_llm.model import (
    bundled_model_file,
    cache_root,
    chat_prompt,
    convert_gguf,
    load_model,
    model_id,
    native_bf16,
    resolve_dtype,
)
from gfo_llm.testing import tiny_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_bundled_model_file_is_the_smollm2_gguf() -> None:
    path = bundled_model_file()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_missing_paths_and_bad_dtype_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(GfoError, match=r"model path '/no/such/model.gguf' does not exist"):
        load_model("/no/such/model.gguf")
    with pytest.raises(GfoError, match=r"model path './no-such-dir' does not exist"):
        load_model("./no-such-dir")
    text = tmp_path / "weights.txt"
    text.write_text("not a model")
    with pytest.raises(GfoError, match=r"neither a \.gguf file nor a model directory"):
        load_model(str(text))
    with pytest.raises(GfoError, match="dtype must be auto or one of bf16, fp32, fp16; got 'int8'"):
        load_model(None, dtype="int8")


def test_hub_ids_and_paths_are_told_apart() -> None:
    looks_like_path = model_module._looks_like_path
    assert not looks_like_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not looks_like_path("gpt2")
    assert looks_like_path("/abs/model") and looks_like_path("./rel") and looks_like_path("~/m")
    assert looks_like_path("runs/a/adapter")  # nested: not a hub id


def test_cache_root_follows_argument_then_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GFO_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(str(tmp_path / "arg")) == tmp_path / "arg"
    monkeypatch.delenv("GFO_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "gfo"


def test_gguf_cache_key_changes_with_the_file(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 10)
    first = model_module._gguf_cache_dir(gguf, str(tmp_path), "models")
    assert first == model_module._gguf_cache_dir(gguf, str(tmp_path), "models")
    assert first.parent == tmp_path / "models" and first.name.startswith("m-")
    os.utime(gguf, ns=(1, 1))
    assert model_module._gguf_cache_dir(gguf, str(tmp_path), "models") != first


def test_atomic_write_leaves_only_the_finished_directory(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "entry"

    def write(tmp: Path) -> None:
        (tmp / "a.txt").write_text("a")

    model_module._write_atomically(target, write)
    assert (target / "a.txt").read_text() == "a"
    model_module._write_atomically(target, write)  # a concurrent writer that lost the race
    assert sorted(p.name for p in target.parent.iterdir()) == ["entry"]

    def fail(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        model_module._write_atomically(tmp_path / "cache" / "other", fail)
    assert sorted(p.name for p in target.parent.iterdir()) == ["entry"]


def test_tiny_model_is_seeded_frozen_and_ready_for_left_padding(tiny_lm: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_lm
    again, _ = tiny_model(seed=0)
    other, _ = tiny_model(seed=1)
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(weight, again.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(weight, other.model.layers[0].self_attn.q_proj.weight)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert model_id(model) == "gfo-tiny-llama-seed0"


def test_load_model_from_a_directory(tiny_lm: tuple[Any, Any], tiny_model_dir: Path) -> None:
    model, tokenizer = load_model(str(tiny_model_dir), dtype="fp32")
    assert model_id(model) == str(tiny_model_dir.resolve())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    ids = torch.tensor([[1, 9690, 198, 2683]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, tiny_lm[0](ids).logits)
    half, _ = load_model(str(tiny_model_dir), dtype="bf16")
    assert half.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    auto, _ = load_model(str(tiny_model_dir))  # the default
    expected = torch.bfloat16 if native_bf16() else torch.float32
    assert auto.model.layers[0].self_attn.q_proj.weight.dtype == expected


def test_auto_dtype_follows_native_bf16_support(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_dtype("fp32") == "fp32" and resolve_dtype("bf16") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_dtype("auto") == "fp32"  # AVX2-only CPU: emulated bf16 is slower (docs/performance.md)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_dtype("auto") == "bf16"
    assert LLMConfig().dtype == "auto"


def test_chat_prompt_ends_with_the_generation_prompt(tiny_lm: tuple[Any, Any]) -> None:
    tokenizer = tiny_lm[1]
    text = chat_prompt(tokenizer, "What is 2+3?")
    assert text.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    with_system = chat_prompt(tokenizer, "What is 2+3?", system="Answer with a number.")
    assert with_system.startswith("<|im_start|>system\nAnswer with a number.<|im_end|>")

    class Plain:
        chat_template = None

    assert chat_prompt(Plain(), "2+3=", system="Be brief.") == "Be brief.\n\n2+3="


@pytest.mark.slow
def test_gguf_converts_once_and_reloads_fast_with_identical_logits(tmp_path: Path) -> None:
    """The first load dequantizes the GGUF (~20 s); the cached directory reloads in < 1 s (2 s here
    to tolerate a busy machine) with bit-identical logits."""
    from transformers import AutoModelForCausalLM, GgufConfig

    gguf = bundled_model_file()
    directory = convert_gguf(gguf, str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [directory.name]
    assert (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file()

    start = time.perf_counter()
    cached, tokenizer = load_model(str(gguf), dtype="fp32", cache_dir=str(tmp_path))
    seconds = time.perf_counter() - start
    assert seconds < 2.0, f"reload from the cache took {seconds:.2f} s"
    assert model_id(cached) == str(directory)

    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    ids = tokenizer(chat_prompt(tokenizer, "What is 12 + 7?"), return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(cached(ids).logits, direct(ids).logits)


@pytest.mark.slow
def test_hub_id_without_network_is_a_user_error() -> None:
    with pytest.raises(GfoError, match="could not load model 'no-such-org-gfo/no-such-model'"):
        load_model("no-such-org-gfo/no-such-model", dtype="fp32")
