"""LoRA spaces, initial adapters and PEFT adapter files, on the tiny model."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from torch import nn

from gfo.errors import GfoError
from gfo_llm.adapters import export_weights, load_peft_adapter, peft_model, save_peft_adapter
from gfo_llm.lora import init_lora, target_linear_modules
from gfo_llm.spaces import LoRASpace, SVDSpace

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_target_modules_match_short_names_and_refuse_unknown(tiny_lm: tuple[Any, Any]) -> None:
    model, _ = tiny_lm
    names = target_linear_modules(model, ("q_proj", "v_proj"))
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    with pytest.raises(GfoError, match=r"qq_proj match no linear layer.*choose from .*q_proj"):
        target_linear_modules(model, ("qq_proj",))


def test_pissa_takes_the_top_components_and_leaves_the_residual(tiny_lm_copy: tuple[Any, Any]) -> None:
    model, _ = tiny_lm_copy
    before = weights(model)
    lora = init_lora(model, TARGETS, rank=4, method="pissa")
    after = weights(model)
    assert len(lora) == 8
    for name, (a, b) in lora.items():
        w = before[name]
        assert a.shape == (4, w.shape[1]) and b.shape == (w.shape[0], 4)
        # PiSSA (arXiv 2404.02948): W_res + B A == W, and B A is the best rank-4 approximation.
        torch.testing.assert_close(after[name] + b @ a, w, atol=1e-5, rtol=1e-5)
        u, s, vh = torch.linalg.svd(w)
        torch.testing.assert_close(b @ a, (u[:, :4] * s[:4]) @ vh[:4], atol=1e-5, rtol=1e-4)
    untouched = [n for n in before if not n.endswith(TARGETS)]
    assert untouched and all(torch.equal(before[n], after[n]) for n in untouched)


def test_random_init_is_seeded_and_leaves_the_model(tiny_lm_copy: tuple[Any, Any]) -> None:
    model, _ = tiny_lm_copy
    before = weights(model)
    first = init_lora(model, TARGETS, rank=4, method="random", seed=3)
    again = init_lora(model, TARGETS, rank=4, method="random", seed=3)
    other = init_lora(model, TARGETS, rank=4, method="random", seed=4)
    assert all(torch.equal(before[n], w) for n, w in weights(model).items())
    for name, (a, b) in first.items():
        assert torch.count_nonzero(b) == 0
        assert 0 < a.abs().max() <= 1 / math.sqrt(a.shape[1])
        assert torch.equal(a, again[name][0]) and not torch.equal(a, other[name][0])
    with pytest.raises(GfoError, match="init must be one of pissa, random"):
        init_lora(model, TARGETS, rank=4, method="lora")
    with pytest.raises(GfoError, match="rank 65 exceeds"):
        init_lora(model, TARGETS, rank=65)


def random_lora(seed: int = 0, rank: int = 4) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"model.layers.{i}.self_attn.{p}": (
            torch.randn(rank, 64, generator=g),
            torch.randn(out, rank, generator=g),
        )
        for i in range(2)
        for p, out in (("q_proj", 64), ("k_proj", 32), ("v_proj", 32), ("o_proj", 64))
    }


@pytest.mark.parametrize(("alpha", "searched"), [(1.0, 4), (0.5, 2), (0.3, 2), (0.01, 1)])
def test_svd_space_dimension_and_centre(alpha: float, searched: int) -> None:
    lora = random_lora()
    space = SVDSpace(lora, alpha)
    # ESSA: modules x 2 factors x ceil(alpha r).
    assert space.dim == 8 * 2 * searched
    assert torch.equal(space.center(), torch.zeros(space.dim))
    for name, (a, b) in space.to_lora(space.center()).items():
        torch.testing.assert_close(a, lora[name][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b, lora[name][1], atol=1e-5, rtol=1e-5)


def test_svd_factors_reconstruct_and_offsets_move_singular_values() -> None:
    lora = random_lora()
    space = SVDSpace(lora, alpha=0.5)
    for name, f in space.factors.items():
        a, b = lora[name]
        torch.testing.assert_close((f.u_a * f.s_a) @ f.v_a.T, a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close((f.u_b * f.s_b) @ f.v_b.T, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(f.m, f.u_a.T @ f.v_b)
    vector = torch.zeros(space.dim)
    vector[0], vector[1], vector[2] = 0.5, -0.25, 2.0  # module 0: dA_1, dA_2, dB_1
    population = space.population(torch.stack([torch.zeros(space.dim), vector]))
    name = space.modules[0]
    f = space.factors[name]
    assert torch.equal(population.scales_a[name][0], f.s_a)
    torch.testing.assert_close(population.scales_a[name][1], f.s_a + torch.tensor([0.5, -0.25, 0, 0]))
    torch.testing.assert_close(population.scales_b[name][1], f.s_b + torch.tensor([2.0, 0, 0, 0]))
    a1, b1 = space.to_lora(vector)[name]
    torch.testing.assert_close(a1, (f.u_a * (f.s_a + torch.tensor([0.5, -0.25, 0, 0]))) @ f.v_a.T)
    torch.testing.assert_close(torch.linalg.svdvals(b1)[0], f.s_b[0] + 2.0)


def test_svd_space_of_a_zero_factor_gets_a_generic_orthonormal_basis() -> None:
    lora = {name: (a, torch.zeros_like(b)) for name, (a, b) in random_lora().items()}
    space = SVDSpace(lora)
    vector = torch.zeros(space.dim)
    vector[4] = 1.0  # module 0, dB_1
    name = space.modules[0]
    f = space.factors[name]
    torch.testing.assert_close(f.u_b.T @ f.u_b, torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(f.v_b.T @ f.v_b, torch.eye(4), atol=1e-5, rtol=0)
    b1 = space.to_lora(vector)[name][1]
    assert torch.linalg.matrix_rank(b1) == 1
    # Not a coordinate axis: the output direction spreads over many of the 64 output features.
    assert (b1.abs().sum(dim=1) > 1e-3).sum() > 32


def test_lora_space_layout() -> None:
    lora = random_lora()
    space = LoRASpace(lora)
    assert space.dim == sum(a.numel() + b.numel() for a, b in lora.values())
    vector = space.center()
    vector[0] += 1.0  # A[0, 0] of the first module
    vector[4 * 64] += 2.0  # B[0, 0] of the first module
    name = space.modules[0]
    a, b = space.to_lora(vector)[name]
    assert a[0, 0] == lora[name][0][0, 0] + 1 and b[0, 0] == lora[name][1][0, 0] + 2
    population = space.population(torch.stack([space.center(), vector]))
    assert population.a[name].shape == (2, 4, 64) and population.b[space.modules[1]].shape == (2, 32, 4)
    assert torch.equal(population.b[name][1], b)


def test_spaces_refuse_wrong_shapes() -> None:
    space = SVDSpace(random_lora())
    with pytest.raises(GfoError, match=r"population must have shape \(P, 64\).*got \(2, 63\)"):
        space.population(torch.zeros(2, 63))
    with pytest.raises(GfoError, match=r"P >= 1.*got \(0, 64\)"):
        space.population(torch.zeros(0, 64))
    with pytest.raises(GfoError, match=r"vector must have shape \(64,\)"):
        space.to_lora(torch.zeros(3))
    with pytest.raises(GfoError, match="alpha must be in"):
        SVDSpace(random_lora(), alpha=0.0)


def test_export_then_load_round_trip(tiny_lm: tuple[Any, Any], tmp_path: Any) -> None:
    model, _ = tiny_lm
    lora = random_lora(seed=1)
    path = save_peft_adapter(lora, tmp_path / "adapter", "gfo-tiny-llama-seed0", TARGETS)
    config = json.loads((path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 4, "LORA")
    assert config["base_model_name_or_path"] == "gfo-tiny-llama-seed0"
    loaded = load_peft_adapter(path, model, rank=4, target_modules=TARGETS)
    assert list(loaded) == list(lora)
    for name, (a, b) in loaded.items():
        assert torch.equal(a, lora[name][0]) and torch.equal(b, lora[name][1])
    # Overwriting is atomic and leaves no temporary folders behind.
    save_peft_adapter(random_lora(seed=2), path, "gfo-tiny-llama-seed0", TARGETS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert not torch.equal(load_peft_adapter(path, model)[name][0], lora[name][0])


def test_pissa_export_has_rank_2r_and_the_same_effective_weight() -> None:
    lora, residual = random_lora(seed=1), random_lora(seed=2)
    exported = export_weights(lora, residual)
    for name, (a, b) in exported.items():
        assert a.shape[0] == b.shape[1] == 8
        # W + B_exp A_exp == (W - B0 A0) + B' A'
        torch.testing.assert_close(
            b @ a, lora[name][1] @ lora[name][0] - residual[name][1] @ residual[name][0], atol=1e-4, rtol=1e-5
        )


def test_load_folds_peft_scaling_into_b(
    tiny_lm: tuple[Any, Any], tiny_lm_copy: tuple[Any, Any], tmp_path: Any
) -> None:
    """An adapter written by PEFT itself, lora_alpha != r, loads as the same effective delta W."""
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_lm_copy
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = get_peft_model(model, config)
    wrapped.save_pretrained(tmp_path / "peft")
    layer = wrapped.base_model.model.model.layers[1].self_attn.v_proj
    expected = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * 4.0
    loaded = load_peft_adapter(tmp_path / "peft", tiny_lm[0], rank=4)
    a, b = loaded["model.layers.1.self_attn.v_proj"]
    torch.testing.assert_close(b @ a, expected.detach())
    assert len(loaded) == 4


def test_load_errors_name_problem_and_fix(tiny_lm: tuple[Any, Any], tmp_path: Any) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model, _ = tiny_lm
    with pytest.raises(GfoError, match="does not exist"):
        load_peft_adapter(tmp_path / "nope", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GfoError, match=r"has no adapter_config\.json"):
        load_peft_adapter(tmp_path / "empty", model)
    path = save_peft_adapter(random_lora(), tmp_path / "adapter", "gfo-tiny-llama-seed0", TARGETS)
    with pytest.raises(GfoError, match=r"has rank 4 but rank 8 was asked; set problem.rank=4"):
        load_peft_adapter(path, model, rank=8)
    with pytest.raises(GfoError, match=r"adapts k_proj,o_proj,q_proj,v_proj.*target_modules=k_proj,o_proj"):
        load_peft_adapter(path, model, target_modules=("q_proj", "v_proj"))
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        )
    )
    message = (
        r"made for base model 'gfo-tiny-llama-seed0'.*k_proj is 32x64, this model's is 32x32; load it on"
    )
    with pytest.raises(GfoError, match=message):
        load_peft_adapter(path, other)
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(GfoError, match=r"has no adapter_model\.safetensors \(\.bin adapters are not read"):
        load_peft_adapter(path, model)


def test_peft_reference_model_holds_the_exact_factors(tiny_lm_copy: tuple[Any, Any]) -> None:
    model, _ = tiny_lm_copy
    lora = random_lora(seed=5)
    wrapped = peft_model(model, {"x": lora, "y": random_lora(seed=6)})
    layer = wrapped.base_model.model.get_submodule("model.layers.0.self_attn.k_proj")
    assert torch.equal(layer.lora_A["x"].weight, lora["model.layers.0.self_attn.k_proj"][0])
    assert layer.scaling["x"] == 1.0
