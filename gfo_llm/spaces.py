"""LoRA search spaces: a flat vector (or a population of them) <-> LoRA weights.

A LoRA weights value (`LoRAWeights`) maps a module path such as
`"model.layers.0.self_attn.q_proj"` to `(A, B)` with A of shape (r, in) and B of shape (out, r),
float32, scaling folded into B: the layer computes `W x + B A x`.

Two spaces are offered:

- `SVDSpace` (ESSA, arXiv 2507.04453, Sec. 3): each factor is decomposed once, A = U_A S_A V_A^T
  and B = U_B S_B V_B^T; the singular vectors are frozen and the vector holds offsets to the top
  ceil(alpha r) singular values of every factor. The centre (all zeros) is the initial adapter.
- `LoRASpace`: the full A and B factors flattened; the centre is the initial A, B.

Initial adapters come from `init_lora` (PiSSA, arXiv 2404.02948, or random A with B = 0) or from
a PEFT adapter directory (`load_peft_adapter`, e.g. a supervised warm start).
"""

from __future__ import annotations

import json
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


def search_dim(space: str, shapes: LoRAShapes, alpha: float = 1.0) -> int:
    """The `dim` of `SVDSpace(lora, alpha)` ("svd") or `LoRASpace(lora)` ("lora") for factors of these
    shapes, without building them: 2 ceil(alpha min(r, in)) or r (in + out) per module."""
    if space == "svd":
        # SVDSpace searches ceil(alpha k) of the k = min(r, in) singular values of each factor.
        return sum(2 * math.ceil(alpha * min(a)) for a, _ in shapes.values())
    return sum(a[0] * a[1] + b[0] * b[1] for a, b in shapes.values())


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


@dataclass(frozen=True)
class SVDFactors:
    """One module's frozen ESSA decomposition: A = U_A diag(s_a) V_A^T, B = U_B diag(s_b) V_B^T."""

    u_a: Tensor  # (r, r)
    s_a: Tensor  # (r,)
    v_a: Tensor  # (in, r)
    u_b: Tensor  # (out, r)
    s_b: Tensor  # (r,)
    v_b: Tensor  # (r, r)
    m: Tensor  # (r, r) = U_A^T V_B: the shared core between the two scalings
    searched: int  # the top `searched` singular values of each factor are in the vector


@dataclass(frozen=True)
class SVDPopulation:
    """Per-candidate singular values of each module's factors, (P, r) each; everything else is shared."""

    scales_a: dict[str, Tensor]
    scales_b: dict[str, Tensor]
    size: int


@dataclass(frozen=True)
class LoRAPopulation:
    """Per-candidate factors of each module: A (P, r, in) and B (P, out, r)."""

    a: dict[str, Tensor]
    b: dict[str, Tensor]
    size: int


Population = SVDPopulation | LoRAPopulation


class Space(ABC):
    """A search space over LoRA weights for a fixed set of modules."""

    modules: tuple[str, ...]
    dim: int

    @abstractmethod
    def center(self) -> Tensor:
        """The vector of the initial adapter, shape (dim,)."""

    @abstractmethod
    def to_lora(self, vector: Tensor) -> LoRAWeights:
        """One candidate's LoRA weights (for export and sequential reference runs)."""

    @abstractmethod
    def population(self, vectors: Tensor) -> Population:
        """What the batched layers need for a whole population (P, dim), without per-row copies."""

    def _population_matrix(self, vectors: Tensor) -> Tensor:
        vectors = torch.as_tensor(vectors)
        if vectors.ndim == 1:
            vectors = vectors[None]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.shape[0] < 1:
            raise GfoError(
                f"population must have shape (P, {self.dim}) with P >= 1 for this space; "
                f"got {tuple(vectors.shape)}"
            )
        return vectors.detach().to(torch.float32).contiguous()

    def _vector(self, vector: Tensor) -> Tensor:
        vector = torch.as_tensor(vector)
        if vector.shape != (self.dim,):
            raise GfoError(f"vector must have shape ({self.dim},) for this space; got {tuple(vector.shape)}")
        return vector.detach().to(torch.float32)


class SVDSpace(Space):
    """ESSA's space (arXiv 2507.04453, Sec. 3.2): offsets to the top ceil(alpha r) singular values.

    dim = modules x 2 x ceil(alpha r). Per module the vector holds `[dA_1..dA_k, dB_1..dB_k]`, and a
    candidate's factors are A' = U_A diag(s_A + dA) V_A^T, B' = U_B diag(s_B + dB) V_B^T (Eq. 4).
    Singular vectors of zero singular values (B = 0 at a random init) are arbitrary; they are
    replaced by seeded random orthonormal ones so that the searched directions are generic
    rather than the first coordinate axes.
    """

    def __init__(self, lora: LoRAWeights, alpha: float = 1.0, seed: int = 0) -> None:
        if not 0.0 < alpha <= 1.0:
            raise GfoError(f"alpha must be in (0, 1]; got {alpha}, use 1.0 to search all singular values")
        if not lora:
            raise GfoError("the LoRA weights are empty; nothing to search")
        generator = torch.Generator().manual_seed(seed)
        self.alpha = alpha
        self.factors: dict[str, SVDFactors] = {}
        with one_thread():
            for name, (a, b) in lora.items():
                self.factors[name] = _decompose(a, b, alpha, generator)
        self.modules = tuple(self.factors)
        self.dim = sum(2 * f.searched for f in self.factors.values())

    def center(self) -> Tensor:
        return torch.zeros(self.dim)

    def to_lora(self, vector: Tensor) -> LoRAWeights:
        population = self.population(self._vector(vector)[None])
        lora: LoRAWeights = {}
        for name, f in self.factors.items():
            s_a, s_b = population.scales_a[name][0], population.scales_b[name][0]
            lora[name] = ((f.u_a * s_a) @ f.v_a.T, (f.u_b * s_b) @ f.v_b.T)
        return lora

    def population(self, vectors: Tensor) -> SVDPopulation:
        vectors = self._population_matrix(vectors)
        scales_a: dict[str, Tensor] = {}
        scales_b: dict[str, Tensor] = {}
        offset = 0
        for name, f in self.factors.items():
            k = f.searched
            scales_a[name] = _add_offsets(f.s_a, vectors[:, offset : offset + k])
            scales_b[name] = _add_offsets(f.s_b, vectors[:, offset + k : offset + 2 * k])
            offset += 2 * k
        return SVDPopulation(scales_a=scales_a, scales_b=scales_b, size=vectors.shape[0])


class LoRASpace(Space):
    """The full factors: per module the vector holds `A.flatten()` then `B.flatten()`."""

    def __init__(self, lora: LoRAWeights) -> None:
        if not lora:
            raise GfoError("the LoRA weights are empty; nothing to search")
        self.shapes = {name: (tuple(a.shape), tuple(b.shape)) for name, (a, b) in lora.items()}
        self.modules = tuple(lora)
        self._center = torch.cat(
            [torch.cat([a.reshape(-1), b.reshape(-1)]).to(torch.float32) for a, b in lora.values()]
        )
        self.dim = self._center.numel()

    def center(self) -> Tensor:
        return self._center.clone()

    def to_lora(self, vector: Tensor) -> LoRAWeights:
        population = self.population(self._vector(vector)[None])
        return {name: (population.a[name][0].clone(), population.b[name][0].clone()) for name in self.modules}

    def population(self, vectors: Tensor) -> LoRAPopulation:
        vectors = self._population_matrix(vectors)
        size = vectors.shape[0]
        a: dict[str, Tensor] = {}
        b: dict[str, Tensor] = {}
        offset = 0
        for name, (shape_a, shape_b) in self.shapes.items():
            n_a, n_b = shape_a[0] * shape_a[1], shape_b[0] * shape_b[1]
            # Views into `vectors`: no per-candidate copies of the factors.
            a[name] = vectors[:, offset : offset + n_a].view(size, *shape_a)
            b[name] = vectors[:, offset + n_a : offset + n_a + n_b].view(size, *shape_b)
            offset += n_a + n_b
        return LoRAPopulation(a=a, b=b, size=size)


def _decompose(a: Tensor, b: Tensor, alpha: float, generator: torch.Generator) -> SVDFactors:
    a, b = a.to(torch.float32), b.to(torch.float32)
    u_a, s_a, vh_a = torch.linalg.svd(a, full_matrices=False)
    u_b, s_b, vh_b = torch.linalg.svd(b, full_matrices=False)
    u_a, v_a = _complete(u_a, s_a, generator), _complete(vh_a.T, s_a, generator)
    u_b, v_b = _complete(u_b, s_b, generator), _complete(vh_b.T, s_b, generator)
    return SVDFactors(
        u_a=u_a.contiguous(),
        s_a=s_a,
        v_a=v_a.contiguous(),
        u_b=u_b.contiguous(),
        s_b=s_b,
        v_b=v_b.contiguous(),
        m=(u_a.T @ v_b).contiguous(),
        searched=math.ceil(alpha * s_a.shape[0]),
    )


def _add_offsets(singular_values: Tensor, offsets: Tensor) -> Tensor:
    scales = singular_values.expand(offsets.shape[0], -1).clone()
    scales[:, : offsets.shape[1]] += offsets
    return scales


def _complete(vectors: Tensor, singular_values: Tensor, generator: torch.Generator) -> Tensor:
    """Replace the columns of `vectors` that belong to (numerically) zero singular values."""
    tol = singular_values.max() * max(vectors.shape) * torch.finfo(torch.float32).eps
    null = singular_values <= tol
    if not bool(null.any()):
        return vectors
    kept = vectors[:, ~null]
    candidates = torch.randn(vectors.shape[0], int(null.sum()), generator=generator)
    # Orthonormal to the kept columns: Gram-Schmidt via QR of [kept, random].
    q, _ = torch.linalg.qr(torch.cat([kept, candidates], dim=1))
    completed = vectors.clone()
    completed[:, null] = q[:, kept.shape[1] :]
    return completed
