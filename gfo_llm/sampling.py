"""Seeded sampling for the population engine: one generator per row, common random numbers.

Greedy decoding (temperature 0) is the engine's default and never comes here. With a temperature,
each row (candidate, prompt, sample) draws its next token with the Gumbel-max trick from a torch
generator of its own, seeded from (run seed, generation, prompt index, sample index) only. Every
candidate of a generation therefore draws the same random numbers for the same prompt and sample
(common random numbers: candidates differ by their weights, not by their luck), and a row's draws
do not depend on where it sits in a batch, on how many rows are in flight, on which Ray actor
evaluates it, or on a resume. The draw is the exponential race, argmax_i p_i / E_i with E_i = -log U_i
(the Gumbel-max trick, argmax log p_i + G_i, with one logarithm fewer; vLLM samples the same way): an
exact sample of p = softmax(logits / T), and with shared noise two rows whose distributions are
close mostly pick the same token, which inverse-CDF sampling on the vocabulary's arbitrary order
would not give.

The same function draws the tokens in the continuous decode loop (`RowSampler`) and inside
`model.generate` (`SeededSampler`, a logits processor used with greedy search), so the `hf` engine
and a plain PEFT model reproduce the engine's samples token for token in float32.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gfo.errors import GfoError


@dataclass(frozen=True)
class Sampling:
    """How a `generate` call samples: temperature, nucleus, k samples per prompt, and the seed
    coordinates of its rows (`seed`, `generation`; prompt i of the call is prompt `first_prompt + i`)."""

    temperature: float
    top_p: float = 1.0
    samples: int = 1
    seed: int = 0
    generation: int = 0
    first_prompt: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.temperature < math.inf:
            raise GfoError(f"sampling needs a temperature > 0; got {self.temperature} (greedy: no Sampling)")
        if not 0.0 < self.top_p <= 1.0:
            raise GfoError(f"top_p must be in (0, 1]; got {self.top_p}, use e.g. 0.95 (1.0: all tokens)")
        if self.samples < 1:
            raise GfoError(f"samples must be >= 1; got {self.samples}")

    def row_seed(self, prompt: int, sample: int) -> int:
        """The generator seed of the call's prompt `prompt`, sample `sample` (any candidate)."""
        return row_seed(self.seed, self.generation, self.first_prompt + prompt, sample)

    def seeds(self, candidates: int, prompts: int) -> list[int]:
        """The seed of every row of a call, candidate-major, then prompt, then sample: the order of
        the columns `generate` returns (prompt i's samples are columns i x k to i x k + k - 1)."""
        per_candidate = [self.row_seed(p, s) for p in range(prompts) for s in range(self.samples)]
        return per_candidate * candidates


def row_seed(seed: int, generation: int, prompt: int, sample: int) -> int:
    """A 63-bit generator seed of these four coordinates and nothing else (BLAKE2b: stable across
    processes and Python versions, unlike `hash`; no two nearby tuples share a stream)."""
    key = f"gfo-sampling/{seed}/{generation}/{prompt}/{sample}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` seeded with `seed` (a CUDA row draws on its own device)."""
    return torch.Generator(device=device).manual_seed(seed)


def sample_tokens(
    logits: Tensor, generators: Sequence[torch.Generator], temperature: float, top_p: float = 1.0
) -> Tensor:
    """One token per row of `logits` (rows, vocab), row i drawing from `generators[i]`.

    Each row takes one uniform per vocabulary entry from its generator per call, so the t-th call of
    a row's generator always yields the same numbers whatever the other rows are. Temperature
    first, then the nucleus (`top_p`: the smallest set of most likely tokens holding that much
    probability; the most likely token always stays), as transformers' warpers order them.
    """
    probs = (logits.float() / temperature).softmax(-1)
    if top_p < 1.0:
        probs = nucleus(probs, top_p)
    vocab = probs.shape[-1]
    noise = torch.stack([torch.rand(vocab, generator=g, device=g.device) for g in generators])
    noise = noise.to(probs.device).clamp_(min=torch.finfo(noise.dtype).tiny)  # rand may give 0
    return probs.div_(noise.log_().neg_()).argmax(-1)


def nucleus(probs: Tensor, top_p: float) -> Tensor:
    """`probs` with 0 outside each row's top-p nucleus (Holtzman et al. 2020, arXiv 1904.09751).

    The nucleus is found among each row's k most likely tokens, k = 64, 256, ... until the k hold
    top_p in every row: a full sort of the vocabulary costs several times a decode step's sampling.
    """
    vocab, k = probs.shape[-1], min(64, probs.shape[-1])
    while True:
        top, index = probs.topk(k, dim=-1)  # sorted, most likely first
        mass = top.cumsum(-1)
        if k == vocab or bool((mass[:, -1] >= top_p).all()):
            inside = (mass - top) < top_p  # the mass before the token does not reach top_p yet
            return torch.zeros_like(probs).scatter_(-1, index, top * inside)
        k = min(vocab, 4 * k)


class RowSampler:
    """The decode loop's sampler: request r draws from a generator seeded with `seeds[r]`, made when
    the request first needs a token and dropped when it stops (`done`)."""

    def __init__(self, sampling: Sampling, seeds: Sequence[int], device: torch.device) -> None:
        self.temperature = sampling.temperature
        self.top_p = sampling.top_p
        self.seeds = list(seeds)
        self.device = device
        self._generators: dict[int, torch.Generator] = {}

    def pick(self, logits: Tensor, requests: Sequence[int]) -> Tensor:
        """The next token of each request (rows of `logits`, in that order)."""
        generators = []
        for r in requests:
            if r not in self._generators:
                self._generators[r] = generator(self.seeds[r], self.device)
            generators.append(self._generators[r])
        return sample_tokens(logits, generators, self.temperature, self.top_p)

    def done(self, request: int) -> None:
        self._generators.pop(request, None)


class SeededSampler:
    """A transformers logits processor that samples row i of every step from a generator seeded with
    `seeds[i]` and leaves only that token possible: with greedy search (`do_sample=False`),
    `model.generate` then returns exactly the engine's samples."""

    def __init__(self, sampling: Sampling, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.temperature = sampling.temperature
        self.top_p = sampling.top_p
        self.generators = [generator(s, device) for s in seeds]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if len(self.generators) != scores.shape[0]:
            raise ValueError(
                f"SeededSampler has {len(self.generators)} rows; the batch has {scores.shape[0]}"
            )
        chosen = sample_tokens(scores, self.generators, self.temperature, self.top_p)
        out = torch.full_like(scores, -torch.inf)
        return out.scatter(-1, chosen[:, None], 0.0)
