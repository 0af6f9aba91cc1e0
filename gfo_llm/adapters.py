"""PEFT LoRA adapters in and out of gfo: load a warm start, export for transformers/PEFT and vLLM,
and PEFT models for reference runs."""

from __future__ import annotations

import glob
import json
import math
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gfo.errors import GfoError
from gfo_llm.lora import LoRAShapes, LoRAWeights

WEIGHTS_NAME = "adapter_model.safetensors"


@dataclass(frozen=True)
class AdapterLayout:
    """What a PEFT LoRA adapter directory holds, read from its config and the safetensors header."""

    weights_file: Path
    base_model: str | None  # base_model_name_or_path
    scaling: float  # lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA
    keys: dict[str, tuple[str, str]]  # module path -> (lora_A key, lora_B key), model order
    shapes: LoRAShapes  # module path -> (A shape, B shape), model order


def adapter_layout(
    path: str | Path,
    model: nn.Module,
    rank: int | None = None,
    target_modules: Sequence[str] | None = None,
) -> AdapterLayout:
    """Check that a PEFT LoRA adapter directory fits `model` without reading its tensors.

    Every check of `load_peft_adapter` is made here, from `adapter_config.json` and the tensor
    shapes in the safetensors header, so `model` may be an `empty_model` (meta device).
    """
    from safetensors import safe_open

    directory = Path(path).expanduser()
    where = repr(str(path))
    config_file = directory / "adapter_config.json"
    weights_file = directory / "adapter_model.safetensors"
    if not directory.is_dir():
        raise GfoError(f"adapter directory {where} does not exist; pass a PEFT adapter directory")
    for file in (config_file, weights_file):
        if not file.is_file():
            hint = (
                " (.bin adapters are not read: re-save with safe_serialization=True)"
                if file == weights_file
                else ""
            )
            raise GfoError(f"adapter directory {where} has no {file.name}{hint}; pass a PEFT LoRA adapter")
    config = json.loads(config_file.read_text())
    base_name = config.get("base_model_name_or_path")
    if config.get("peft_type", "LORA") != "LORA":
        raise GfoError(f"adapter {where} is {config.get('peft_type')}, not LORA; pass a LoRA adapter")
    for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save"):
        if config.get(key):
            raise GfoError(f"adapter {where} uses {key}, which gfo cannot search; pass a plain LoRA adapter")
    r = int(config["r"])
    if rank is not None and r != rank:
        raise GfoError(f"adapter {where} has rank {r} but rank {rank} was asked; set problem.rank={r}")
    alpha = float(config.get("lora_alpha", r))
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r

    with safe_open(str(weights_file), framework="pt") as handle:  # the header only, no tensor
        names = handle.keys()
        header = {key: tuple(handle.get_slice(key).get_shape()) for key in names}
    factors: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    for key, shape in header.items():
        stem = key.removeprefix("base_model.model.")
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in stem:
                factors.setdefault(stem.split(marker)[0], {})[part] = (key, shape)
                break
        else:
            raise GfoError(
                f"adapter {where} holds {key}, which is not a LoRA factor; pass a plain LoRA adapter"
            )

    modules = dict(model.named_modules())
    shapes: LoRAShapes = {}
    for name, pair in factors.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise GfoError(f"adapter {where} lacks lora_A or lora_B for {name}; the file is incomplete")
        layer = modules.get(name)
        a, b = _pair(pair["lora_A"][1], where), _pair(pair["lora_B"][1], where)
        shapes[name] = (a, b)
        if not isinstance(layer, nn.Linear) or tuple(layer.weight.shape) != (b[0], a[1]):
            if isinstance(layer, nn.Linear):
                found = "x".join(map(str, layer.weight.shape))
            else:
                found = "missing" if layer is None else f"a {type(layer).__name__}, not a plain linear layer"
            raise GfoError(
                f"adapter {where} was made for base model {base_name!r}: its {name} is "
                f"{b[0]}x{a[1]}, this model's is {found}; load it on that base model"
            )
    if not factors:
        raise GfoError(f"adapter {where} holds no LoRA weights; pass a trained PEFT LoRA adapter")
    if target_modules is not None:
        adapted = {name.rsplit(".", 1)[-1] for name in factors}
        if adapted != set(target_modules):
            raise GfoError(
                f"adapter {where} adapts {','.join(sorted(adapted))} but target_modules is "
                f"{','.join(target_modules)}; set problem.target_modules={','.join(sorted(adapted))}"
            )
    # Model order, so that vectors do not depend on the file's key order.
    ordered = [name for name in modules if name in factors]
    return AdapterLayout(
        weights_file=weights_file,
        base_model=base_name,
        scaling=scaling,
        keys={name: (factors[name]["lora_A"][0], factors[name]["lora_B"][0]) for name in ordered},
        shapes={name: shapes[name] for name in ordered},
    )


def _pair(shape: tuple[int, ...], where: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise GfoError(
            f"adapter {where} holds a LoRA factor of shape {shape}, not a matrix; the file is broken"
        )
    return shape[0], shape[1]


def load_peft_adapter(
    path: str | Path,
    model: nn.Module,
    rank: int | None = None,
    target_modules: Sequence[str] | None = None,
) -> LoRAWeights:
    """Read a PEFT LoRA adapter directory (safetensors) into LoRA weights, scaling folded into B.

    Checks that it fits `model` (module paths and shapes), and, when given, the expected `rank`
    and `target_modules`; each mismatch is a `GfoError` naming the problem and the fix
    (`adapter_layout`).
    """
    from safetensors import safe_open

    layout = adapter_layout(path, model, rank, target_modules)
    lora: LoRAWeights = {}
    with safe_open(str(layout.weights_file), framework="pt") as handle:
        for name, (key_a, key_b) in layout.keys.items():
            a = handle.get_tensor(key_a).to(torch.float32)
            b = handle.get_tensor(key_b).to(torch.float32)
            lora[name] = (a.contiguous(), (b * layout.scaling).contiguous())
    base_name = layout.base_model
    ours = getattr(model, "gfo_model_id", None) or getattr(model, "name_or_path", None)
    if base_name and ours and Path(str(base_name)).name != Path(str(ours)).name:
        warnings.warn(
            f"adapter {str(path)!r} names base model {base_name!r}, loading it on {ours!r} (shapes match)",
            stacklevel=2,
        )
    return lora


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
        # CPU copies: a factor computed on a GPU is written like any other.
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.detach().to("cpu", torch.float32).contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.detach().to("cpu", torch.float32).contiguous()

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
