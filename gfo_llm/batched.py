"""The population engine: every candidate of an ES population in one batched `generate` call.

The space's target layers are wrapped in per-row LoRA layers (`gfo_llm.layers.PopulationLinear`),
and candidates x prompts rows run through one continuous-batching decode loop (`gfo_llm.decode`)
or, the reference, through chunked `model.generate` calls. In ESSA's SVD space (arXiv 2507.04453)
every matrix product uses weights shared by the whole population and a candidate differs only by
element-wise scales of r-vectors, so a population costs about as much as plain batched inference
of the same number of rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from gfo.errors import GfoError
from gfo_llm.config import ENGINES
from gfo_llm.decode import (
    PREFILL_POSITIONS,
    DecodeStats,
    greedy_decode,
    shared_prefix,
    stop_length,
    stop_matcher,
)
from gfo_llm.layers import Rows, install, uninstall
from gfo_llm.spaces import Population, Space, SVDSpace


@dataclass(frozen=True)
class GenerationResult:
    """Greedy completions of P candidates on B prompts, candidate-major."""

    completions: list[list[str]]  # [candidate][prompt]
    num_tokens: list[list[int]]  # generated tokens per row, up to and including EOS, no padding
    finished: list[list[bool]]  # True when the row stopped at EOS, False when it hit the cap
    seconds: float  # wall time of the generate calls (tokenization and decoding included)

    @property
    def total_tokens(self) -> int:
        return sum(map(sum, self.num_tokens))

    @property
    def tokens_per_second(self) -> float:
        return self.total_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def capped_fraction(self) -> float:
        """Share of rows that ran to `max_new_tokens` without an EOS."""
        rows = [done for row in self.finished for done in row]
        return rows.count(False) / len(rows) if rows else 0.0


class Engine(Protocol):
    """What `LLMProblem` generates with: `PopulationGenerator` or `gfo_llm.vllm_backend.VLLMGenerator`."""

    def generate(
        self, vectors: Tensor, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = ()
    ) -> GenerationResult:
        """Greedy completions of every candidate (rows of `vectors`) on every (chat-templated) prompt."""
        ...

    def close(self) -> None:
        """Release what the engine holds (its hooks into the model, a vLLM engine); idempotent."""
        ...


class PopulationGenerator:
    """Greedy generation for a whole population: candidates x prompts rows, per-row LoRA.

    `model` must already carry the space's base weights (after `init_lora`, the PiSSA residual):
    the generator wraps the space's modules in place and owns the model from then on (`close()`
    restores plain linear layers). `engine="continuous"` (default) runs every row through one
    continuous-batching decode loop of at most `row_budget` rows in flight (`gfo_llm.decode`);
    `engine="hf"`, the reference, hands chunks of at most `row_budget` rows to `model.generate`
    (a chunk holds whole candidates when `row_budget >= B`, otherwise one candidate and a slice of
    the prompts) and runs each chunk until its longest row stops.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, space: Space, row_budget: int = 64, engine: str = "continuous"
    ) -> None:
        if row_budget < 1:
            raise GfoError(f"row_budget must be >= 1; got {row_budget}, use e.g. 64")
        if engine not in ENGINES:
            raise GfoError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        self.model: Any = model  # a transformers causal LM (`generate`)
        self.tokenizer = tokenizer
        self.space = space
        self.row_budget = row_budget
        self.engine = engine
        self.layers = install(model, space.modules)
        self._eos = eos_ids(model, tokenizer)
        self.last_stats: DecodeStats | None = None  # the continuous engine's counts of the last call

    @torch.inference_mode()
    def generate(
        self, vectors: Tensor, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = ()
    ) -> GenerationResult:
        """Greedy completions of every candidate (rows of `vectors`) on every (chat-templated) prompt.

        A row stops at EOS, at `max_new_tokens`, or at the shortest prefix whose text matches one
        of the `stop` regular expressions.
        """
        if not prompts:
            raise GfoError("prompts is empty; pass at least one prompt")
        if max_new_tokens < 1:
            raise GfoError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
        start_time = time.perf_counter()
        population = self.space.population(vectors)
        if self.engine == "continuous":
            return self._continuous(population, prompts, max_new_tokens, stop, start_time)
        size, n_prompts = population.size, len(prompts)
        matcher = stop_matcher(stop, self.tokenizer)
        encoded = self.tokenizer(list(prompts), padding=True, return_tensors="pt", add_special_tokens=False)
        completions = [[""] * n_prompts for _ in range(size)]
        num_tokens = [[0] * n_prompts for _ in range(size)]
        finished = [[False] * n_prompts for _ in range(size)]
        factors = self.space.factors if isinstance(self.space, SVDSpace) else {}
        try:
            for c0, c1, p0, p1 in _plan(size, n_prompts, self.row_budget):
                rows = Rows.blocked(c0, c1 - c0, p1 - p0)
                for name, layer in self.layers.items():
                    layer.select(name, population, rows, factors.get(name))
                ids, mask = _trim_left(encoded["input_ids"][p0:p1], encoded["attention_mask"][p0:p1])
                texts, counts, done = self._generate_rows(
                    ids.repeat(c1 - c0, 1), mask.repeat(c1 - c0, 1), max_new_tokens, matcher
                )
                for row, (text, count, ended) in enumerate(zip(texts, counts, done, strict=True)):
                    c, p = c0 + row // (p1 - p0), p0 + row % (p1 - p0)
                    completions[c][p], num_tokens[c][p], finished[c][p] = text, count, ended
        finally:
            for layer in self.layers.values():
                layer.clear()
        return GenerationResult(completions, num_tokens, finished, time.perf_counter() - start_time)

    def _continuous(
        self,
        population: Population,
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str],
        start_time: float,
    ) -> GenerationResult:
        """All candidates x prompts through one continuous-batching decode loop (`gfo_llm.decode`)."""
        size, n_prompts = population.size, len(prompts)
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        requests = [encoded[p] for _ in range(size) for p in range(n_prompts)]  # candidate-major
        factors = self.space.factors if isinstance(self.space, SVDSpace) else {}
        routed: list[tuple[int, ...]] = [()]

        def select(rows: Sequence[int]) -> None:
            key = tuple(rows)
            if key == routed[0]:
                return  # the same rows as the last forward pass: the layers are already routed
            routed[0] = key
            index = Rows.of(torch.tensor([r // n_prompts for r in rows]))
            for name, layer in self.layers.items():
                layer.select(name, population, index, factors.get(name))

        try:
            tokens, done, stats = greedy_decode(
                self.model,
                requests,
                select=select,
                eos=self._eos,
                max_new_tokens=max_new_tokens,
                row_budget=self.row_budget,
                stop=stop_matcher(stop, self.tokenizer),
                groups=[r // n_prompts for r in range(len(requests))],
            )
        finally:
            for layer in self.layers.values():
                layer.clear()
        self.last_stats = stats
        texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        grid = [range(c * n_prompts, (c + 1) * n_prompts) for c in range(size)]
        return GenerationResult(
            [[texts[r] for r in rows] for rows in grid],
            [[len(tokens[r]) for r in rows] for rows in grid],
            [[done[r] for r in rows] for rows in grid],
            time.perf_counter() - start_time,
        )

    @torch.inference_mode()
    def log_likelihood(
        self,
        vectors: Tensor,
        prompts: Sequence[str],
        completions: Sequence[str],
        position_budget: int = PREFILL_POSITIONS,
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced log-probability of each completion after its prompt, for every candidate.

        Returns the summed log-probabilities of the completion tokens, float64 (P, B), and each
        completion's token count (B,). The prompts' common prefix (the chat template's system turn)
        runs once per candidate and its KV cache is shared by the candidate's rows, as in the
        continuous engine; the rest runs in forward passes of at most `row_budget` rows and about
        `position_budget` padded positions, left-padded so that every completion ends in the last
        column; only the logits of the last `longest completion + 1` positions are computed.
        """
        from transformers import DynamicCache

        if not prompts or len(prompts) != len(completions):
            raise GfoError(
                f"log_likelihood needs one completion per prompt; got {len(prompts)} prompt(s) and "
                f"{len(completions)} completion(s)"
            )
        population = self.space.population(vectors)
        size, n_prompts = population.size, len(prompts)
        heads = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        tails = self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        if not all(heads) or not all(tails):
            raise GfoError("log_likelihood got an empty prompt or completion; every one needs a token")
        factors = self.space.factors if isinstance(self.space, SVDSpace) else {}
        device = next(self.model.parameters()).device

        def select(rows: Rows) -> None:
            for name, layer in self.layers.items():
                layer.select(name, population, rows, factors.get(name))

        try:
            requests = [heads[p] for _ in range(size) for p in range(n_prompts)]  # candidate-major
            shared = shared_prefix(
                self.model,
                requests,
                [r // n_prompts for r in range(len(requests))],
                lambda rows: select(Rows.of(torch.tensor([r // n_prompts for r in rows]))),
                device,
                DynamicCache,
                DecodeStats(),
            )
            skip = shared.length if shared is not None else 0
            width = max(len(h) + len(t) for h, t in zip(heads, tails, strict=True)) - skip
            keep = max(map(len, tails))
            ids = torch.full((n_prompts, width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros(n_prompts, width, dtype=torch.long)
            targets = torch.full((n_prompts, keep), -1, dtype=torch.long)  # -1: not a completion token
            for i, (head, tail) in enumerate(zip(heads, tails, strict=True)):
                row = head[skip:] + tail
                ids[i, width - len(row) :] = torch.tensor(row)
                mask[i, width - len(row) :] = 1
                targets[i, keep - len(tail) :] = torch.tensor(tail)
            sums = torch.zeros(size, n_prompts, dtype=torch.float64)
            budget = max(1, min(self.row_budget, position_budget // width))
            for c0, c1, p0, p1 in _plan(size, n_prompts, budget):
                n = c1 - c0
                select(Rows.blocked(c0, n, p1 - p0))
                chunk_ids, chunk_mask = _trim_left(ids[p0:p1], mask[p0:p1])
                positions = skip + (chunk_mask.cumsum(dim=1) - 1).clamp(min=0)
                chunk_mask = chunk_mask.repeat(n, 1)
                cache = None
                if shared is not None:
                    cache = shared.cache([c for c in range(c0, c1) for _ in range(p1 - p0)], DynamicCache)
                    chunk_mask = torch.cat(
                        [torch.ones(len(chunk_mask), skip, dtype=torch.long), chunk_mask], 1
                    )
                # The logit at position j predicts token j + 1: the last `last` targets need the
                # `last + 1` last positions' logits, less the very last one. Every row keeps at least
                # one prompt token before its completion, so no completion token is cut off.
                last = min(keep, chunk_ids.shape[1] - 1)
                logits = self.model(
                    input_ids=chunk_ids.repeat(n, 1).to(device),
                    attention_mask=chunk_mask.to(device),
                    position_ids=positions.repeat(n, 1).to(device),
                    past_key_values=cache,
                    use_cache=cache is not None,
                    # Indices, not a count: the model then gathers those positions into a contiguous
                    # tensor, and its vocabulary projection is one matrix product. With a count the
                    # strided slice made torch copy the 49k x 576 head once per row (68% of the time).
                    logits_to_keep=torch.arange(
                        chunk_ids.shape[1] - last - 1, chunk_ids.shape[1], device=device
                    ),
                ).logits[:, :-1]
                chosen = targets[p0:p1, keep - last :].repeat(n, 1).to(device)
                logits = logits.float()
                picked = logits.gather(-1, chosen.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                picked = picked - torch.logsumexp(logits, dim=-1)
                # where(), not a product: padded positions of a short row may hold NaN logits.
                picked = torch.where(chosen >= 0, picked, torch.zeros_like(picked))
                sums[c0:c1, p0:p1] = picked.sum(dim=-1).view(n, p1 - p0).double().cpu()
        finally:
            for layer in self.layers.values():
                layer.clear()
        return sums, torch.tensor([len(t) for t in tails], dtype=torch.float64)

    def close(self) -> None:
        """Restore the model's plain linear layers (the base weights stay as they are); idempotent."""
        if self.layers:
            uninstall(self.model)
        self.layers = {}

    def _generate_rows(
        self, ids: Tensor, mask: Tensor, max_new_tokens: int, stop: Callable[[list[int]], bool] | None
    ) -> tuple[list[str], list[int], list[bool]]:
        from transformers import GenerationConfig

        # A fresh config: greedy argmax only, whatever sampling or penalties the model ships with.
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self._eos,
        )
        out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        texts, counts, finished = decode_rows(self.tokenizer, out[:, ids.shape[1] :], self._eos)
        if stop is not None:  # the decode loop's rule after the fact: cut at the shortest match
            for row, generated in enumerate(out[:, ids.shape[1] :].tolist()):
                n = stop_length(generated[: counts[row]], stop)
                if n is not None:
                    counts[row], finished[row] = n, True
                    texts[row] = self.tokenizer.decode(generated[:n], skip_special_tokens=True)
        return texts, counts, finished


def decode_rows(
    tokenizer: Any, new_tokens: Tensor, eos: Sequence[int]
) -> tuple[list[str], list[int], list[bool]]:
    """Text, token count (up to and including the first EOS) and stop flag of each generated row."""
    is_eos = torch.isin(new_tokens, torch.tensor(list(eos)))
    counts: list[int] = []
    finished: list[bool] = []
    for row in is_eos:
        hits = row.nonzero()
        stop = hits.numel() > 0
        counts.append(int(hits[0]) + 1 if stop else row.numel())
        finished.append(stop)
    texts = tokenizer.batch_decode(
        [tokens[:count] for tokens, count in zip(new_tokens, counts, strict=True)], skip_special_tokens=True
    )
    return list(texts), counts, finished


def eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """EOS ids of the model's generation config and the tokenizer: what both backends stop on."""
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    if not ids:
        raise GfoError("the tokenizer and model define no EOS token; set tokenizer.eos_token")
    return sorted(ids)


def _plan(size: int, n_prompts: int, budget: int) -> list[tuple[int, int, int, int]]:
    """Chunks (c0, c1, p0, p1), balanced so that no chunk is much smaller than the others."""
    if budget >= n_prompts:
        per_chunk = budget // n_prompts
        n_chunks = -(-size // per_chunk)
        step = -(-size // n_chunks)
        return [(c, min(c + step, size), 0, n_prompts) for c in range(0, size, step)]
    n_slices = -(-n_prompts // budget)
    step = -(-n_prompts // n_slices)
    return [(c, c + 1, p, min(p + step, n_prompts)) for c in range(size) for p in range(0, n_prompts, step)]


def _trim_left(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop columns that are padding in every row (a slice of a left-padded batch)."""
    first = int(mask.any(dim=0).nonzero()[0])
    return ids[:, first:], mask[:, first:]
