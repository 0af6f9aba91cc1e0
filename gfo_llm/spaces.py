"""LoRA search spaces: a flat vector (or a population of them) <-> LoRA weights.

LoRA weights (`gfo_llm.lora.LoRAWeights`) map a module path to `(A, B)`, scaling folded into B.
Two spaces are offered:

- `SVDSpace` (ESSA, arXiv 2507.04453, Sec. 3): each factor is decomposed once, A = U_A S_A V_A^T
  and B = U_B S_B V_B^T; the singular vectors are frozen and the vector holds offsets to the top
  ceil(alpha r) singular values of every factor. The centre (all zeros) is the initial adapter.
- `LoRASpace`: the full A and B factors flattened; the centre is the initial A, B.

The initial adapter comes from `gfo_llm.lora.init_lora` (PiSSA or random) or from a PEFT adapter
directory (`gfo_llm.adapters.load_peft_adapter`, e.g. a supervised warm start).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from gfo.errors import GfoError
from gfo.threads import one_thread
from gfo_llm.lora import LoRAShapes, LoRAWeights


def search_dim(space: str, shapes: LoRAShapes, alpha: float = 1.0) -> int:
    """The `dim` of `SVDSpace(lora, alpha)` ("svd") or `LoRASpace(lora)` ("lora") for factors of these
    shapes, without building them: 2 ceil(alpha min(r, in)) or r (in + out) per module."""
    if space == "svd":
        # SVDSpace searches ceil(alpha k) of the k = min(r, in) singular values of each factor.
        return sum(2 * math.ceil(alpha * min(a)) for a, _ in shapes.values())
    return sum(a[0] * a[1] + b[0] * b[1] for a, b in shapes.values())


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
