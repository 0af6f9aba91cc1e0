"""PEFT adapters out of gfo: export for transformers/PEFT and vLLM, and PEFT models for reference runs."""

from __future__ import annotations

import glob
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gfo.errors import GfoError
from gfo_llm.spaces import LoRAWeights

WEIGHTS_NAME = "adapter_model.safetensors"


def export_weights(lora: LoRAWeights, residual: LoRAWeights | None = None) -> LoRAWeights:
    """The factors to ship against the ORIGINAL base model.

    With a PiSSA start (arXiv 2404.02948, Sec. 4.5, as PEFT's PiSSA-to-LoRA conversion) the model
    ran on the residual W_res = W - B0 A0, so the adapter becomes rank 2r:
    A = [A'; A0], B = [B', -B0], and W + B A = W_res + B' A'.
    """
    if residual is None:
        return {name: (a.contiguous(), b.contiguous()) for name, (a, b) in lora.items()}
    if set(residual) != set(lora):
        raise GfoError("residual and adapter cover different modules; pass the init_lora output of this run")
    return {
        name: (torch.cat([a, residual[name][0]], dim=0), torch.cat([b, -residual[name][1]], dim=1))
        for name, (a, b) in lora.items()
    }


def save_peft_adapter(
    lora: LoRAWeights,
    path: str | Path,
    base_model_id: str,
    target_modules: Sequence[str] | None = None,
    residual: LoRAWeights | None = None,
) -> Path:
    """Write a standard PEFT LoRA directory (adapter_config.json + adapter_model.safetensors).

    Loadable by `peft.PeftModel.from_pretrained(base, path)` and vLLM's `LoRARequest` (with
    `max_lora_rank` >= the saved rank, 2r after PiSSA). Scaling is folded into B, so the config
    says lora_alpha = r. The directory is written beside it and renamed into place; what a save
    killed midway left there (`.NAME.*`) is removed first.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    weights = export_weights(lora, residual)
    ranks = {a.shape[0] for a, _ in weights.values()}
    if len(ranks) != 1:
        raise GfoError(f"all modules must share one rank to export; got ranks {sorted(ranks)}")
    rank = ranks.pop()
    if target_modules is None:
        target_modules = sorted({name.rsplit(".", 1)[-1] for name in weights})
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_id,
        inference_mode=True,
    )
    # PEFT keeps target_modules as a set, which json writes in the order of the process's string
    # hashes (PYTHONHASHSEED): sorted, every process writes the same adapter_config.json.
    for key, value in list(vars(config).items()):
        if isinstance(value, set):
            setattr(config, key, sorted(value))
    tensors: dict[str, Tensor] = {}
    for name, (a, b) in weights.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.detach().to(torch.float32).contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.detach().to(torch.float32).contiguous()

    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old = target.with_name(f".{target.name}.old")
    try:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target


def peft_model(model: nn.Module, adapters: Mapping[str, LoRAWeights]) -> Any:
    """`model` (modified in place) as a `peft.PeftModel` holding each named adapter's exact factors.

    The reference implementation the batched engine is checked against, and the library baseline of
    the benchmark (PEFT's mixed-adapter batches, `generate(..., adapter_names=[...])`).
    """
    from peft import LoraConfig, get_peft_model

    if not adapters:
        raise GfoError("no adapters given")
    wrapped: Any = None
    for adapter_name, lora in adapters.items():
        rank = next(iter(lora.values()))[0].shape[0]
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=list(lora), lora_dropout=0.0, init_lora_weights=False
        )
        if wrapped is None:
            wrapped = get_peft_model(model, config, adapter_name=adapter_name)
        else:
            wrapped.add_adapter(adapter_name, config)
        inner = wrapped.base_model.model
        with torch.no_grad():
            for name, (a, b) in lora.items():
                layer = inner.get_submodule(name)
                layer.lora_A[adapter_name].weight.copy_(a)
                layer.lora_B[adapter_name].weight.copy_(b)
    wrapped.eval()
    wrapped.requires_grad_(False)
    return wrapped
