"""Per-row LoRA layers: a linear layer whose batch rows each carry their own candidate's adapter.

Each target `nn.Linear` is wrapped in a `PopulationLinear` (`install`). Rows of the batch belong to
candidates (`Rows`: a candidate index per row); a layer computes the shared base product `x W^T`
once for all rows and adds each row's own low-rank term (EGGROLL, arXiv 2511.16652, Sec. 3:
`x W^T + x A_i^T B_i^T`). In ESSA's SVD space (arXiv 2507.04453) that term is
`(((x V_A) * s_A[i]) M) * s_B[i] U_B^T` with `M = U_A^T V_B`, so a candidate differs only by
element-wise scales of r-vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gfo.errors import GfoError
from gfo_llm.spaces import Population, SVDFactors, SVDPopulation


@dataclass(frozen=True)
class Rows:
    """Which candidate each batch row belongs to.

    `blocks` is set when the rows are candidates `start .. start + count - 1` with `per` rows each,
    in that order (what `PopulationGenerator` builds): the LoRA space then needs no per-row copies.
    """

    index: Tensor  # LongTensor (rows,)
    blocks: tuple[int, int, int] | None = None  # (start, count, per)

    @classmethod
    def of(cls, index: Tensor) -> Rows:
        index = torch.as_tensor(index, dtype=torch.long)
        start, rows = int(index[0]), index.numel()
        for count in range(1, rows + 1):
            if rows % count == 0:
                candidate = torch.arange(start, start + count).repeat_interleave(rows // count)
                if torch.equal(candidate, index):
                    return cls(index, (start, count, rows // count))
        return cls(index)

    @classmethod
    def blocked(cls, start: int, count: int, per: int) -> Rows:
        return cls(torch.arange(start, start + count).repeat_interleave(per), (start, count, per))


class PopulationLinear(nn.Module):
    """A linear layer plus a per-row low-rank term; with no population selected it is the base layer.

    The low-rank term is computed in `compute_dtype`, float32 by default (small matrix products are
    slow in bf16 on CPU, and PEFT computes it in float32 too) and added to the base output in float32
    before casting back, which is PEFT's arithmetic for a bf16 model with float32 adapter weights.
    With `compute_dtype` the model's own dtype (bf16 on a GPU, `benchmarks/gpu_check.py` measures
    both), the term is computed and added in that dtype.
    """

    def __init__(self, base: nn.Linear, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.base = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.compute_dtype = compute_dtype
        self._delta: _Delta | None = None

    @property
    def weight(self) -> Tensor:
        return self.base.weight

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self._delta is None:
            return out
        if out.dtype == self.compute_dtype:
            return out.add_(self._delta(x))
        return (out.to(self.compute_dtype) + self._delta(x.to(self.compute_dtype))).to(out.dtype)

    def select(self, name: str, population: Population, rows: Rows, factors: SVDFactors | None) -> None:
        """Route each row of the next forward passes through its candidate's adapter."""
        device, dtype = self.base.weight.device, self.compute_dtype
        if isinstance(population, SVDPopulation):
            assert factors is not None
            scales = population.scales_a[name], population.scales_b[name]
            self._delta = _SVDRows(factors, *scales, rows, device, dtype)
        else:
            self._delta = _LoRARows(population.a[name], population.b[name], rows, device, dtype)

    def clear(self) -> None:
        self._delta = None


class _Delta:
    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class _SVDRows(_Delta):
    """`((x V_A) * s_A) M * s_B U_B^T`: only the two scalings are per row."""

    def __init__(
        self,
        factors: SVDFactors,
        scales_a: Tensor,
        scales_b: Tensor,
        rows: Rows,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.v_a = factors.v_a.to(device, dtype)
        self.m = factors.m.to(device, dtype)
        self.u_b_t = factors.u_b.T.contiguous().to(device, dtype)
        # (rows, 1, r): broadcasts over the sequence dimension of (rows, seq, r).
        self.scales_a = scales_a[rows.index].unsqueeze(1).to(device, dtype)
        self.scales_b = scales_b[rows.index].unsqueeze(1).to(device, dtype)

    def __call__(self, x: Tensor) -> Tensor:
        h = (x @ self.v_a).mul_(self.scales_a)
        h = (h @ self.m).mul_(self.scales_b)
        return h @ self.u_b_t


class _LoRARows(_Delta):
    """`x A_i^T B_i^T` with the candidates' own factors, batched by candidate block or by row."""

    def __init__(
        self, a: Tensor, b: Tensor, rows: Rows, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> None:
        self.blocks = rows.blocks
        if rows.blocks is not None:
            start, count, _ = rows.blocks
            a, b = a[start : start + count], b[start : start + count]
        else:
            a, b = a[rows.index], b[rows.index]
        self.a_t = a.transpose(1, 2).to(device, dtype)  # (n, in, r)
        self.b_t = b.transpose(1, 2).to(device, dtype)  # (n, r, out)

    def __call__(self, x: Tensor) -> Tensor:
        rows, seq, _ = x.shape
        if self.blocks is not None:
            # Candidate c owns rows c*per .. c*per+per-1: fold them into one bmm batch entry.
            count = self.blocks[1]
            h = torch.bmm(x.reshape(count, -1, x.shape[-1]), self.a_t)
            return torch.bmm(h, self.b_t).reshape(rows, seq, -1)
        return torch.bmm(torch.bmm(x, self.a_t), self.b_t)


def install(
    model: nn.Module, modules: Sequence[str], compute_dtype: torch.dtype = torch.float32
) -> dict[str, PopulationLinear]:
    """Wrap the named `nn.Linear` modules of `model` in `PopulationLinear` (idempotent; the low-rank
    term of every wrapped layer is computed in `compute_dtype`)."""
    layers: dict[str, PopulationLinear] = {}
    named = dict(model.named_modules())
    for name in modules:
        module = named.get(name)
        if isinstance(module, PopulationLinear):
            module.compute_dtype = compute_dtype
            layers[name] = module
            continue
        if not isinstance(module, nn.Linear):
            raise GfoError(
                f"module {name!r} is not a linear layer of this model; the space was built for another model"
            )
        parent_name, _, child = name.rpartition(".")
        wrapper = PopulationLinear(module, compute_dtype)
        setattr(named[parent_name] if parent_name else model, child, wrapper)
        layers[name] = wrapper
    return layers


def uninstall(model: nn.Module) -> None:
    """Put the original `nn.Linear` modules back."""
    for name, module in list(model.named_modules()):
        if isinstance(module, PopulationLinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.base)
