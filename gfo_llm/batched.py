"""The population engine: every candidate of an ES population in one batched `generate` call.

The space's target layers are wrapped in per-row LoRA layers (`gfo_llm.layers.PopulationLinear`),
and candidates x prompts rows run through one continuous-batching decode loop (`gfo_llm.decode`)
or, the reference, through chunked `model.generate` calls. In ESSA's SVD space (arXiv 2507.04453)
every matrix product uses weights shared by the whole population and a candidate differs only by
element-wise scales of r-vectors, so a population costs about as much as plain batched inference
of the same number of rows.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

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
from gfo_llm.sampling import RowSampler, Sampling, SeededSampler
from gfo_llm.spaces import LoRAPopulation, LoRASpace, Population, Space, SVDFactors, SVDPopulation, SVDSpace

# Rows in flight on a CPU: a 2-core CPU gains little past 64 (docs/performance.md).
CPU_ROW_BUDGET = 64
# On CUDA: the share of free memory the rows' KV caches may take, and a ceiling past which a decode
# step is compute-bound anyway (vLLM's default max_num_seqs is 256 to 1024).
GPU_MEMORY_SHARE = 0.8
GPU_MAX_ROWS = 1024

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class GenerationResult:
    """Completions of P candidates on B prompts, candidate-major (B x k columns with k samples per
    prompt: prompt i's samples are columns i k to i k + k - 1)."""

    completions: list[list[str]]  # [candidate][prompt]
    num_tokens: list[list[int]]  # generated tokens per row, up to and including EOS, no padding
    finished: list[list[bool]]  # True when the row stopped at EOS, False when it hit the cap
    seconds: float  # wall time of the generate calls (tokenization and decoding included)
    # [candidate][prompt] the generated token ids (num_tokens of them); None where an engine has none
    token_ids: list[list[list[int]]] | None = None

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
        self,
        vectors: Tensor,
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        sampling: Sampling | None = None,
    ) -> GenerationResult:
        """Completions of every candidate (rows of `vectors`) on every (chat-templated) prompt: greedy,
        or with `sampling`, `sampling.samples` seeded samples per prompt."""
        ...

    def close(self) -> None:
        """Release what the engine holds (its hooks into the model, a vLLM engine); idempotent."""
        ...


class PopulationGenerator:
    """Greedy generation for a whole population: candidates x prompts rows, per-row LoRA.

    `model` must already carry the space's base weights (after `init_lora`, the PiSSA residual):
    the generator wraps the space's modules in place and owns the model from then on (`close()`
    restores plain linear layers). It runs where the model's parameters are (CPU or a CUDA device):
    the shared factors are copied there once, each call's population once, and the KV cache,
    masks and positions live there. `engine="continuous"` (default) runs every row through one
    continuous-batching decode loop of at most `row_budget` rows in flight (`gfo_llm.decode`);
    `engine="hf"`, the reference, hands chunks of at most `row_budget` rows to `model.generate`
    (a chunk holds whole candidates when `row_budget >= B`, otherwise one candidate and a slice of
    the prompts) and runs each chunk until its longest row stops.

    `lowrank_dtype` is the dtype of the per-row low-rank terms (float32: PEFT's arithmetic, and on a
    CPU the fast one; `gfo_llm.layers.PopulationLinear`). `row_budget=None` sizes the rows in flight
    for the device: `CPU_ROW_BUDGET` on a CPU; on CUDA, per call, as many rows as the free memory
    holds (`gpu_row_budget`). A CUDA out-of-memory error halves the rows in
    flight and runs the call again, so no call is lost; the smaller size then holds for later calls.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        space: Space,
        row_budget: int | None = CPU_ROW_BUDGET,
        engine: str = "continuous",
        lowrank_dtype: torch.dtype = torch.float32,
    ) -> None:
        if row_budget is not None and row_budget < 1:
            raise GfoError(f"row_budget must be >= 1; got {row_budget}, use e.g. 64 or None (by device)")
        if engine not in ENGINES:
            raise GfoError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        self.model: Any = model  # a transformers causal LM (`generate`)
        self.tokenizer = tokenizer
        self.space = space
        self.device = next(model.parameters()).device
        self.requested_budget = row_budget
        self.row_budget = row_budget or CPU_ROW_BUDGET  # the rows in flight of the last call
        self.engine = engine
        self.layers = install(model, space.modules, lowrank_dtype)
        self._eos = eos_ids(model, tokenizer)
        self._ceiling: int | None = None  # after an out-of-memory error: at most this many rows
        self._factors: dict[str, SVDFactors] = {}
        if isinstance(space, SVDSpace):  # the frozen factors, copied to the device once
            self._factors = {name: _factors_on(f, self.device) for name, f in space.factors.items()}
        self.last_stats: DecodeStats | None = None  # the continuous engine's counts of the last call

    def budget(self, longest: int) -> int:
        """The rows in flight for a call whose rows reach `longest` positions (prompt + new tokens)."""
        if self.requested_budget is not None:
            budget = self.requested_budget
        elif self.device.type == "cuda":
            budget = gpu_row_budget(self.model, self.space, longest, self.device)
        else:
            budget = CPU_ROW_BUDGET
        if self._ceiling is not None:
            budget = min(budget, self._ceiling)
        if budget != self.row_budget:
            _log.info(
                "population engine: %d rows in flight on %s (rows of %d positions)",
                budget,
                self.device,
                longest,
            )
        self.row_budget = budget
        return budget

    def _retrying(self, call: Callable[[], _T]) -> _T:
        """`call()`, again with half the rows in flight after each CUDA out-of-memory error."""
        while True:
            try:
                return call()
            except torch.OutOfMemoryError:
                if self.row_budget <= 1:
                    raise
                self._ceiling = max(1, self.row_budget // 2)
                for layer in self.layers.values():
                    layer.clear()
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                warnings.warn(
                    f"out of memory on {self.device} with {self.row_budget} rows in flight; running the call "
                    f"again with {self._ceiling} (set problem.row_budget to choose)",
                    stacklevel=3,
                )

    @torch.inference_mode()
    def generate(
        self,
        vectors: Tensor,
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        sampling: Sampling | None = None,
    ) -> GenerationResult:
        """Greedy completions of every candidate (rows of `vectors`) on every (chat-templated) prompt.

        A row stops at EOS, at `max_new_tokens`, or at the shortest prefix whose text matches one
        of the `stop` regular expressions. With `sampling`, each prompt gets `sampling.samples`
        columns, each row drawing its tokens from a generator seeded by its (prompt, sample)
        coordinates only (`gfo_llm.sampling`): every candidate gets the same random numbers.
        """
        if not prompts:
            raise GfoError("prompts is empty; pass at least one prompt")
        if max_new_tokens < 1:
            raise GfoError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
        return self._retrying(lambda: self._generate(vectors, prompts, max_new_tokens, stop, sampling))

    def _generate(
        self,
        vectors: Tensor,
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str],
        sampling: Sampling | None,
    ) -> GenerationResult:
        start_time = time.perf_counter()
        population = self._population(vectors)
        seeds = sampling.seeds(population.size, len(prompts)) if sampling is not None else None
        if sampling is not None and sampling.samples > 1:  # k columns a prompt, its samples side by side
            prompts = [p for p in prompts for _ in range(sampling.samples)]
        if self.engine == "continuous":
            return self._continuous(population, prompts, max_new_tokens, stop, start_time, sampling, seeds)
        size, n_prompts = population.size, len(prompts)
        matcher = stop_matcher(stop, self.tokenizer)
        encoded = self.tokenizer(list(prompts), padding=True, return_tensors="pt", add_special_tokens=False)
        completions = [[""] * n_prompts for _ in range(size)]
        num_tokens = [[0] * n_prompts for _ in range(size)]
        finished = [[False] * n_prompts for _ in range(size)]
        token_ids: list[list[list[int]]] = [[[] for _ in range(n_prompts)] for _ in range(size)]
        factors = self._factors
        budget = self.budget(encoded["input_ids"].shape[1] + max_new_tokens)
        try:
            for c0, c1, p0, p1 in _plan(size, n_prompts, budget):
                rows = Rows.blocked(c0, c1 - c0, p1 - p0)
                for name, layer in self.layers.items():
                    layer.select(name, population, rows, factors.get(name))
                ids, mask = _trim_left(encoded["input_ids"][p0:p1], encoded["attention_mask"][p0:p1])
                sampler = None
                if sampling is not None and seeds is not None:
                    chunk = [seeds[c * n_prompts + p] for c in range(c0, c1) for p in range(p0, p1)]
                    sampler = SeededSampler(sampling, chunk, self.device)
                texts, counts, done, generated = self._generate_rows(
                    ids.repeat(c1 - c0, 1), mask.repeat(c1 - c0, 1), max_new_tokens, matcher, sampler
                )
                for row, (text, count, ended) in enumerate(zip(texts, counts, done, strict=True)):
                    c, p = c0 + row // (p1 - p0), p0 + row % (p1 - p0)
                    completions[c][p], num_tokens[c][p], finished[c][p] = text, count, ended
                    token_ids[c][p] = generated[row][:count]
        finally:
            for layer in self.layers.values():
                layer.clear()
        seconds = time.perf_counter() - start_time
        return GenerationResult(completions, num_tokens, finished, seconds, token_ids)

    def _continuous(
        self,
        population: Population,
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str],
        start_time: float,
        sampling: Sampling | None = None,
        seeds: Sequence[int] | None = None,
    ) -> GenerationResult:
        """All candidates x prompts through one continuous-batching decode loop (`gfo_llm.decode`)."""
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        matcher = stop_matcher(stop, self.tokenizer)
        sampler = (
            RowSampler(sampling, seeds, self.device) if sampling is not None and seeds is not None else None
        )
        tokens, done, _ = self._decode(population, encoded, max_new_tokens, matcher, sampler)
        texts = [self.tokenizer.batch_decode(rows, skip_special_tokens=True) for rows in tokens]
        return GenerationResult(
            texts,
            [[len(row) for row in rows] for rows in tokens],
            done,
            time.perf_counter() - start_time,
            tokens,
        )

    @torch.inference_mode()
    def generate_ids(
        self,
        vectors: Tensor,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: Callable[[list[int]], bool] | None = None,
    ) -> tuple[list[list[list[int]]], list[list[bool]], DecodeStats]:
        """`generate` on token ids, no tokenizer involved: each candidate's greedy tokens on each prompt,
        [candidate][prompt], up to and including the stop token, whether the row stopped before
        the cap, and the decode loop's statistics. Always the continuous engine."""
        if not prompt_ids or not all(prompt_ids):
            raise GfoError("prompt_ids is empty or holds an empty prompt; pass at least one token per prompt")
        if max_new_tokens < 1:
            raise GfoError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
        return self._retrying(
            lambda: self._decode(self._population(vectors), prompt_ids, max_new_tokens, stop)
        )

    def _decode(
        self,
        population: Population,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: Callable[[list[int]], bool] | None,
        sampler: RowSampler | None = None,
    ) -> tuple[list[list[list[int]]], list[list[bool]], DecodeStats]:
        size, n_prompts = population.size, len(prompt_ids)
        requests = [prompt_ids[p] for _ in range(size) for p in range(n_prompts)]  # candidate-major
        factors = self._factors
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
                row_budget=self.budget(max(map(len, prompt_ids)) + max_new_tokens),
                stop=stop,
                groups=[r // n_prompts for r in range(len(requests))],
                sampler=sampler,
            )
        finally:
            for layer in self.layers.values():
                layer.clear()
        self.last_stats = stats
        grid = [range(c * n_prompts, (c + 1) * n_prompts) for c in range(size)]
        return [[tokens[r] for r in rows] for rows in grid], [[done[r] for r in rows] for rows in grid], stats

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
        if not prompts or len(prompts) != len(completions):
            raise GfoError(
                f"log_likelihood needs one completion per prompt; got {len(prompts)} prompt(s) and "
                f"{len(completions)} completion(s)"
            )
        return self._retrying(lambda: self._log_likelihood(vectors, prompts, completions, position_budget))

    def _log_likelihood(
        self, vectors: Tensor, prompts: Sequence[str], completions: Sequence[str], position_budget: int
    ) -> tuple[Tensor, Tensor]:
        size, tails = len(self.space._population_matrix(vectors)), self._encode(prompts, completions)[1]
        sums = torch.zeros(size, len(prompts), dtype=torch.float64)
        for c0, c1, p0, p1, logits, chosen in self._teacher_forced(
            vectors, prompts, completions, position_budget, lambda budget: _plan(size, len(prompts), budget)
        ):
            picked = logits.gather(-1, chosen.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            picked = picked - torch.logsumexp(logits, dim=-1)
            # where(), not a product: padded positions of a short row may hold NaN logits.
            picked = torch.where(chosen >= 0, picked, torch.zeros_like(picked))
            sums[c0:c1, p0:p1] = picked.sum(dim=-1).view(c1 - c0, p1 - p0).double().cpu()
        return sums, torch.tensor([len(t) for t in tails], dtype=torch.float64)

    @torch.inference_mode()
    def kl(
        self,
        vector: Tensor,
        reference: Tensor,
        prompts: Sequence[str],
        completions: Sequence[str] | Sequence[Sequence[int]],
        position_budget: int = PREFILL_POSITIONS,
    ) -> tuple[Tensor, Tensor]:
        """KL(vector's model || reference's model) of the next-token distributions, exact over the
        vocabulary, at each token of each completion after its prompt, teacher-forced: the sums per
        completion, float64 (B,), and each completion's token count (B,). Both models run on the same
        rows of one forward pass (two candidates), as `log_likelihood` runs a population."""
        if not prompts or len(prompts) != len(completions):
            raise GfoError(
                f"kl needs one completion per prompt; got {len(prompts)} prompt(s) and "
                f"{len(completions)} completion(s)"
            )
        pair = torch.stack([torch.as_tensor(vector), torch.as_tensor(reference)])
        n = len(prompts)

        def plan(budget: int) -> list[tuple[int, int, int, int]]:
            step = max(1, budget // 2)  # both models' rows of a prompt in one pass
            return [(0, 2, p, min(p + step, n)) for p in range(0, n, step)]

        def run() -> tuple[Tensor, Tensor]:
            sums = torch.zeros(n, dtype=torch.float64)
            for _, _, p0, p1, logits, chosen in self._teacher_forced(
                pair, prompts, completions, position_budget, plan
            ):
                mine, theirs = torch.log_softmax(logits, dim=-1).chunk(2)
                per_token = (mine.exp() * (mine - theirs)).sum(dim=-1)
                per_token = torch.where(chosen[: p1 - p0] >= 0, per_token, torch.zeros_like(per_token))
                sums[p0:p1] = per_token.sum(dim=-1).double().cpu()
            tails = self._encode(prompts, completions)[1]
            return sums, torch.tensor([len(t) for t in tails], dtype=torch.float64)

        return self._retrying(run)

    def _encode(
        self, prompts: Sequence[str], completions: Sequence[str] | Sequence[Sequence[int]]
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Prompt and completion token ids; completions given as ids (what the engine generated, EOS
        included) are taken as they are, text is tokenized."""
        heads = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        if all(isinstance(c, str) for c in completions):
            tails = self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        else:
            tails = [[int(t) for t in c] for c in completions]
        if not all(heads) or not all(tails):
            raise GfoError("teacher forcing got an empty prompt or completion; every one needs a token")
        return heads, tails

    def _teacher_forced(
        self,
        vectors: Tensor,
        prompts: Sequence[str],
        completions: Sequence[str] | Sequence[Sequence[int]],
        position_budget: int,
        plan: Callable[[int], list[tuple[int, int, int, int]]],
    ) -> Iterator[tuple[int, int, int, int, Tensor, Tensor]]:
        """Teacher-forced passes of candidates `c0:c1` over prompts `p0:p1` + their completions, in
        the chunks `plan(rows per pass)` gives: yields each chunk's float32 logits at the positions
        that predict completion tokens, (rows, longest completion, vocab), candidate-major, and the
        tokens they predict (-1 where a shorter completion has none).

        The prompts' common prefix (the chat template's system turn) runs once per candidate and its
        KV cache is shared by the candidate's rows, as in the continuous engine; the rest is
        left-padded so that every completion ends in the last column, and only the logits of the
        last `longest completion + 1` positions are computed.
        """
        from transformers import DynamicCache

        population = self._population(vectors)
        size, n_prompts = population.size, len(prompts)
        heads, tails = self._encode(prompts, completions)
        factors = self._factors
        device = self.device

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
            budget = max(1, min(self.budget(skip + width), position_budget // width))
            for c0, c1, p0, p1 in plan(budget):
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
                    # strided slice made torch copy the 49k x 576 head once per row (docs/performance.md).
                    logits_to_keep=torch.arange(
                        chunk_ids.shape[1] - last - 1, chunk_ids.shape[1], device=device
                    ),
                ).logits[:, :-1]
                chosen = targets[p0:p1, keep - last :].repeat(n, 1).to(device)
                yield c0, c1, p0, p1, logits.float(), chosen
        finally:
            for layer in self.layers.values():
                layer.clear()

    def _population(self, vectors: Tensor) -> Population:
        population = self.space.population(vectors)
        return population if self.device.type == "cpu" else _population_on(population, self.device)

    def close(self) -> None:
        """Restore the model's plain linear layers (the base weights stay as they are); idempotent."""
        if self.layers:
            uninstall(self.model)
        self.layers = {}

    def _generate_rows(
        self,
        ids: Tensor,
        mask: Tensor,
        max_new_tokens: int,
        stop: Callable[[list[int]], bool] | None,
        sampler: SeededSampler | None = None,
    ) -> tuple[list[str], list[int], list[bool], list[list[int]]]:
        from transformers import GenerationConfig, LogitsProcessorList

        # A fresh config: greedy argmax only, whatever sampling or penalties the model ships with.
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self._eos,
        )
        # A sampler leaves one token possible per row: greedy search then takes the seeded sample.
        processors = LogitsProcessorList([sampler] if sampler is not None else [])
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=config,
            logits_processor=processors,
        ).cpu()
        texts, counts, finished = decode_rows(self.tokenizer, out[:, ids.shape[1] :], self._eos)
        if stop is not None:  # the decode loop's rule after the fact: cut at the shortest match
            for row, generated in enumerate(out[:, ids.shape[1] :].tolist()):
                n = stop_length(generated[: counts[row]], stop)
                if n is not None:
                    counts[row], finished[row] = n, True
                    texts[row] = self.tokenizer.decode(generated[:n], skip_special_tokens=True)
        return texts, counts, finished, out[:, ids.shape[1] :].tolist()


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


def gpu_row_budget(model: nn.Module, space: Space, longest: int, device: torch.device) -> int:
    """The rows in flight that fit the CUDA device's free memory (`rows_that_fit`); what torch's
    allocator holds but no tensor uses counts as free."""
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return rows_that_fit(free, model, space, longest)


def rows_that_fit(free_bytes: int, model: nn.Module, space: Space, longest: int) -> int:
    """Rows whose memory fits `GPU_MEMORY_SHARE` of `free_bytes`, between 1 and `GPU_MAX_ROWS`.

    A row costs its KV cache at `longest` positions twice over (joining and shrinking the batch
    copy the cache), one position's logits in float32 twice (the logits and their argmax input),
    and in the lora space its candidate's factors in float32 (a row's own copy once the batch mixes
    candidates). A prefill's activations are bounded by `PREFILL_POSITIONS`, not by the rows.
    """
    config: Any = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    element = next(model.parameters()).element_size()
    kv = 2 * config.num_hidden_layers * kv_heads * head_dim * element * longest
    per_row = 2 * kv + 2 * 4 * config.vocab_size
    if isinstance(space, LoRASpace):
        per_row += 4 * space.dim
    return max(1, min(GPU_MAX_ROWS, int(GPU_MEMORY_SHARE * free_bytes // per_row)))


def _factors_on(factors: SVDFactors, device: torch.device) -> SVDFactors:
    return dataclasses.replace(
        factors, v_a=factors.v_a.to(device), m=factors.m.to(device), u_b=factors.u_b.to(device)
    )


def _population_on(population: Population, device: torch.device) -> Population:
    if isinstance(population, SVDPopulation):
        return SVDPopulation(
            {k: v.to(device) for k, v in population.scales_a.items()},
            {k: v.to(device) for k, v in population.scales_b.items()},
            population.size,
        )
    return LoRAPopulation(
        {k: v.to(device) for k, v in population.a.items()},
        {k: v.to(device) for k, v in population.b.items()},
        population.size,
    )
