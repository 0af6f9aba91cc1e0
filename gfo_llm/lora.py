"""LoRA weights of a model: the value type, which linear layers get one, and the initial adapter.

A LoRA weights value (`LoRAWeights`) maps a module path such as
`"model.layers.0.self_attn.q_proj"` to `(A, B)` with A of shape (r, in) and B of shape (out, r),
float32, scaling folded into B: the layer computes `W x + B A x`.

`init_lora` starts one from the model itself (PiSSA, arXiv 2404.02948, or random A with B = 0);
`gfo_llm.adapters.load_peft_adapter` reads one from a PEFT adapter directory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gfo.errors import GfoError
from gfo.threads import one_thread
from gfo_llm.config import INITS

LoRAWeights = dict[str, tuple[Tensor, Tensor]]


def target_linear_modules(model: nn.Module, target_modules: Sequence[str]) -> list[str]:
    """Paths of the `nn.Linear` modules whose last name part (or full path) is in `target_modules`.

    Follows PEFT's matching of short names; `lm_head` is only matched when named.
    """
    if not target_modules:
        raise GfoError("target_modules is empty; use e.g. q_proj,k_proj,v_proj,o_proj")
    wanted = set(target_modules)
    found: list[str] = []
    matched: set[str] = set()
    linear_names: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        short = name.rsplit(".", 1)[-1]
        linear_names.add(short)
        hit = short if short in wanted else name if name in wanted else None
        if hit is not None:
            found.append(name)
            matched.add(hit)
    missing = sorted(wanted - matched)
    if missing:
        raise GfoError(
            f"target_modules {', '.join(missing)} match no linear layer of the model; "
            f"choose from {', '.join(sorted(linear_names))}"
        )
    return found


#: Per module, the shapes of A (r, in) and B (out, r).
LoRAShapes = dict[str, tuple[tuple[int, int], tuple[int, int]]]


def init_shapes(model: nn.Module, target_modules: Sequence[str], rank: int) -> LoRAShapes:
    """The shapes of `init_lora(model, target_modules, rank)`'s factors, with its checks, computing
    nothing: `model` may be an `empty_model` (meta device)."""
    if rank < 1:
        raise GfoError(f"rank must be >= 1; got {rank}, use e.g. 8")
    modules = dict(model.named_modules())
    shapes: LoRAShapes = {}
    for name in target_linear_modules(model, target_modules):
        out_features, in_features = modules[name].weight.shape
        if rank > min(out_features, in_features):
            raise GfoError(
                f"rank {rank} exceeds the size of {name} ({out_features}x{in_features}); "
                f"use rank <= {min(out_features, in_features)}"
            )
        shapes[name] = ((rank, in_features), (out_features, rank))
    return shapes


@torch.inference_mode()
def init_lora(
    model: nn.Module, target_modules: Sequence[str], rank: int, method: str = "pissa", seed: int = 0
) -> LoRAWeights:
    """Initial LoRA weights for every target module, in model order.

    "pissa" (PiSSA, arXiv 2404.02948, Eq. 2-4): with W = U S V^T, B = U_r sqrt(S_r) and
    A = sqrt(S_r) V_r^T, and the base weight is replaced IN PLACE by the residual W - B A, so the
    model with the adapter applied equals the original model. Keep the returned weights: exporting
    an adapter for the original base needs them (`save_peft_adapter(..., residual=...)`).

    "random": A Kaiming-uniform (as PEFT), B = 0; the model is left untouched.
    """
    if method not in INITS:
        raise GfoError(f"init must be one of {', '.join(INITS)}; got {method!r}")
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    lora: LoRAWeights = {}
    with one_thread():
        for name in init_shapes(model, target_modules, rank):
            lora[name] = _init_module(modules[name], rank, method, generator)
    return lora


def _init_module(
    layer: nn.Module, rank: int, method: str, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    assert isinstance(layer, nn.Linear)
    out_features, in_features = layer.weight.shape
    if method == "random":
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_(a=sqrt(5)), PEFT's default for A
        a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
        return a, torch.zeros(out_features, rank)
    weight = layer.weight.detach().to(torch.float32)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    b = (u[:, :rank] * root).contiguous()
    a = (root[:, None] * vh[:rank]).contiguous()
    layer.weight.copy_((weight - b @ a).to(layer.weight.dtype))
    return a.cpu(), b.cpu()
