"""Continuous-batching greedy (or seeded sampled) decoding over a transformers causal LM and its KV cache.

All rows of a request set (candidates x prompts) share one decode batch of at most `row_budget`
rows. A row that stops (EOS, the token cap or a stop pattern) leaves the batch at once, and free
slots are refilled from the queue of waiting rows, which is sorted by prompt length so that a
prefill group needs little padding. A generation therefore costs the tokens its rows need, not
rows x the longest row (the cost of one `generate` call per chunk).

Rows of different prefill groups are joined by left-padding the shorter KV cache; position ids are
explicit per row, so a row computes the same function wherever it sits in the batch. Only the last
position's logits are computed (`logits_to_keep`): the full (rows, prompt, vocab) float32 logits
of a prefill were most of the old engine's peak memory. Decoding is greedy unless a
`gfo_llm.sampling.RowSampler` is given, which draws each row's token from the row's own seeded
generator (common random numbers across candidates, whatever the batch).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gfo_llm.sampling import RowSampler

# Padded positions per prefill forward pass: a CPU runs big prefill batches slower per token
# (docs/performance.md).
PREFILL_POSITIONS = 1024


@dataclass
class DecodeStats:
    """What the decode loop computed: forward calls and the rows x positions they ran over."""

    prefill_calls: int = 0
    decode_steps: int = 0
    prefill_positions: int = 0  # prompt positions of prefill batches, padding included
    decode_rows: int = 0  # rows of all decode steps (each computes one new position)
    peak_rows: int = 0
    rows_per_step: list[int] = field(default_factory=list)
    prefill_seconds: float = 0.0  # forward passes over prompts (LoRA terms included)
    decode_seconds: float = 0.0  # forward passes of decode steps (LoRA terms included)
    cache_seconds: float = 0.0  # joining and shrinking the KV cache
    host_seconds: float = 0.0  # bookkeeping: stop checks, routing rows to adapters

    @property
    def forward_positions(self) -> int:
        return self.prefill_positions + self.decode_rows


@dataclass
class _Batch:
    """The rows in flight: their request index, cache, attention mask, next position and token."""

    rows: list[int]
    cache: Any  # transformers DynamicCache
    mask: Tensor  # (n, cache length) 1 = real token
    position: Tensor  # (n,) position id of the token in `token`
    token: Tensor  # (n,) the last generated token, input of the next step


def stop_matcher(patterns: Sequence[str], tokenizer: Any) -> Callable[[list[int]], bool] | None:
    """A test "has this row's text reached a stop pattern" on the generated tokens so far.

    Both engines stop a row at the shortest token prefix whose decoded text matches one of the
    regular expressions, so their outputs agree token for token.
    """
    if not patterns:
        return None
    compiled = [re.compile(p) for p in patterns]

    def matches(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return any(p.search(text) for p in compiled)

    return matches


def stop_length(tokens: Sequence[int], stop: Callable[[list[int]], bool]) -> int | None:
    """Length of the shortest prefix of `tokens` that `stop` accepts (None: no prefix does).

    The after-the-fact form of the decode loop's rule, for engines that cannot stop a row early.
    """
    if not stop(list(tokens)):
        return None  # the common case, one decode
    for n in range(1, len(tokens) + 1):
        if stop(list(tokens[:n])):
            return n
    return None


def greedy_decode(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    select: Callable[[Sequence[int]], None],
    eos: Sequence[int],
    max_new_tokens: int,
    row_budget: int,
    stop: Callable[[list[int]], bool] | None = None,
    groups: Sequence[int] | None = None,
    refill_at: int | None = None,
    prefill_tokens: int = PREFILL_POSITIONS,
    sampler: RowSampler | None = None,
) -> tuple[list[list[int]], list[bool], DecodeStats]:
    """Greedy tokens of every request (prompt token ids), up to and including the stop token; with
    `sampler`, tokens sampled from each request's own seeded generator instead of the argmax.

    `select(requests)` routes the next forward pass's rows (request indices, in batch order)
    through their candidates' adapters; `groups[request]` names a request's adapter. The prompts'
    longest common token prefix (a chat template's system turn) is computed once per group and
    its KV cache shared by the group's rows. A row is refilled into the batch once `refill_at`
    slots are free (default: an eighth of the budget), in prefill groups of at most
    `prefill_tokens` padded positions (a CPU runs big prefill batches slower per token:
    docs/performance.md). Returns tokens, finished flags (False: the cap) and statistics.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    groups = list(groups) if groups is not None else [0] * len(prompts)
    stats = DecodeStats()
    shared = shared_prefix(model, prompts, groups, select, device, DynamicCache, stats)
    eos_set = set(eos)
    refill_at = max(1, row_budget // 8) if refill_at is None else max(1, refill_at)
    queue = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    queue.reverse()  # pop() takes the shortest first
    tokens: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    batch: _Batch | None = None

    while queue or batch is not None:
        free = row_budget - (len(batch.rows) if batch else 0)
        if queue and (batch is None or free >= min(refill_at, len(queue))):
            group = _take(queue, prompts, free, prefill_tokens, shared.length if shared else 0)
            started = time.perf_counter()
            joined = _prefill(
                model, group, prompts, select, device, DynamicCache, stats, shared, groups, sampler
            )
            stats.prefill_seconds += time.perf_counter() - started
            fresh = len(batch.rows) if batch is not None else 0  # old rows did not move
            started = time.perf_counter()
            batch = joined if batch is None else _concat(batch, joined)
            stats.cache_seconds += time.perf_counter() - started
            stats.peak_rows = max(stats.peak_rows, len(batch.rows))
        else:
            assert batch is not None
            started = time.perf_counter()
            _step(model, batch, select, stats, sampler)
            stats.decode_seconds += time.perf_counter() - started
            fresh = 0
        started = time.perf_counter()
        # Record the new token of every row that moved; drop the rows that stopped.
        keep = list(range(fresh))
        for slot, (request, token) in enumerate(zip(batch.rows, batch.token.tolist(), strict=True)):
            if slot < fresh:
                continue
            out = tokens[request]
            out.append(token)
            if token in eos_set or (stop is not None and stop(out)):
                finished[request] = True
            elif len(out) < max_new_tokens:
                keep.append(slot)
                continue
            if sampler is not None:
                sampler.done(request)
        stats.host_seconds += time.perf_counter() - started
        started = time.perf_counter()
        batch = _select(batch, keep)
        stats.cache_seconds += time.perf_counter() - started
    return tokens, finished, stats


def _take(queue: list[int], prompts: Sequence[Sequence[int]], free: int, budget: int, skip: int) -> list[int]:
    """Up to `free` waiting rows, shortest first, within `budget` padded prefill positions."""
    group = [queue.pop()]
    while queue and len(group) < free and (len(prompts[queue[-1]]) - skip) * (len(group) + 1) <= budget:
        group.append(queue.pop())
    return group


@dataclass
class SharedPrefix:
    """The KV cache of the prompts' common prefix, one row per group (adapter)."""

    length: int
    slot: dict[int, int]  # group -> row of `layers`
    layers: list[tuple[Tensor, Tensor]]

    def cache(self, groups: Sequence[int], cache_class: Any) -> Any:
        """A KV cache holding the prefix once per row, of the rows' `groups`."""
        index = torch.tensor([self.slot[g] for g in groups])
        return cache_class(
            ddp_cache_data=[
                (k.index_select(0, index.to(k.device)), v.index_select(0, index.to(v.device)))
                for k, v in self.layers
            ]
        )


def shared_prefix(
    model: Any,
    prompts: Sequence[Sequence[int]],
    groups: Sequence[int],
    select: Callable[[Sequence[int]], None],
    device: torch.device,
    cache_class: Any,
    stats: DecodeStats,
) -> SharedPrefix | None:
    """The KV cache of the prompts' longest common token prefix (less one token, so that every row
    has one of its own), computed once per group through `select`; None without a common token."""
    if len(prompts) < 2:
        return None
    first, length = prompts[0], min(len(p) for p in prompts) - 1  # every row keeps one token to prefill
    for p in prompts[1:]:
        n = 0
        while n < length and p[n] == first[n]:
            n += 1
        length = n
    if length < 1:
        return None
    representative: dict[int, int] = {}
    for request, group in enumerate(groups):
        representative.setdefault(group, request)
    rows = list(representative.values())
    started = time.perf_counter()
    select(rows)
    ids = torch.as_tensor([list(first[:length])] * len(rows))
    out = model(
        input_ids=ids.to(device),
        position_ids=torch.arange(length).expand(len(rows), -1).to(device),
        past_key_values=cache_class(),
        use_cache=True,
        logits_to_keep=last_position(ids.shape[1], device),
    )
    stats.prefill_calls += 1
    stats.prefill_positions += ids.numel()
    stats.prefill_seconds += time.perf_counter() - started
    layers = [(layer.keys, layer.values) for layer in _layers(out.past_key_values)]
    return SharedPrefix(length, {g: i for i, g in enumerate(representative)}, layers)


def _prefill(
    model: Any,
    group: list[int],
    prompts: Sequence[Sequence[int]],
    select: Callable[[Sequence[int]], None],
    device: torch.device,
    cache_class: Any,
    stats: DecodeStats,
    shared: SharedPrefix | None,
    groups: Sequence[int],
    sampler: RowSampler | None = None,
) -> _Batch:
    skip = shared.length if shared is not None else 0
    width = max(len(prompts[i]) for i in group) - skip
    ids = torch.zeros(len(group), width, dtype=torch.long)
    mask = torch.zeros(len(group), width, dtype=torch.long)
    for row, request in enumerate(group):
        n = len(prompts[request]) - skip
        ids[row, width - n :] = torch.as_tensor(prompts[request][skip:])
        mask[row, width - n :] = 1
    position = skip + (mask.cumsum(1) - 1).clamp(min=0)
    if shared is not None:
        # The shared prefix's keys and values of each row's group, then the row's own (padded) rest.
        cache = shared.cache([groups[r] for r in group], cache_class)
        mask = torch.cat([torch.ones(len(group), skip, dtype=mask.dtype), mask], dim=1)
    else:
        cache = cache_class()
    select(group)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=position.to(device),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=last_position(ids.shape[1], device),
    )
    stats.prefill_calls += 1
    stats.prefill_positions += ids.numel()
    token = _next_tokens(out.logits[:, -1], group, sampler)
    return _Batch(list(group), out.past_key_values, mask, position[:, -1] + 1, token)


def _next_tokens(logits: Tensor, requests: Sequence[int], sampler: RowSampler | None) -> Tensor:
    """The argmax of each row's logits (greedy), or the sampler's draw for each request."""
    if sampler is None:
        return logits.argmax(-1).cpu()
    return sampler.pick(logits, requests).cpu()


def last_position(width: int, device: torch.device) -> Tensor:
    """`logits_to_keep` for the last of `width` positions, as an index: the model then gathers the
    position into a contiguous tensor and projects it with one matrix product. With the count 1 the
    strided slice made torch copy the vocabulary head once per row of a multi-token pass."""
    return torch.tensor([width - 1], device=device)


def _step(
    model: Any,
    batch: _Batch,
    select: Callable[[Sequence[int]], None],
    stats: DecodeStats,
    sampler: RowSampler | None = None,
) -> None:
    device = next(model.parameters()).device
    batch.mask = torch.cat([batch.mask, torch.ones(len(batch.rows), 1, dtype=batch.mask.dtype)], dim=1)
    select(batch.rows)
    out = model(
        input_ids=batch.token[:, None].to(device),
        attention_mask=batch.mask.to(device),
        position_ids=batch.position[:, None].to(device),
        past_key_values=batch.cache,
        use_cache=True,
        logits_to_keep=1,
    )
    batch.cache = out.past_key_values
    batch.token = _next_tokens(out.logits[:, -1], batch.rows, sampler)
    batch.position = batch.position + 1
    stats.decode_steps += 1
    stats.decode_rows += len(batch.rows)
    stats.rows_per_step.append(len(batch.rows))


def _layers(cache: Any) -> list[Any]:
    return list(cache.layers)


def _select(batch: _Batch, keep: list[int]) -> _Batch | None:
    """The batch without the rows that stopped, and without columns that are padding in every row."""
    if not keep:
        return None
    n = len(batch.rows)
    first = int(batch.mask[keep].any(dim=0).nonzero()[0]) if len(keep) < n else 0
    if len(keep) == n and first == 0:
        return batch
    index = torch.tensor(keep)
    for layer in _layers(batch.cache):
        idx = index.to(layer.keys.device)
        layer.keys = layer.keys.index_select(0, idx)[:, :, first:]
        layer.values = layer.values.index_select(0, idx)[:, :, first:]
    return _Batch(
        [batch.rows[i] for i in keep],
        batch.cache,
        batch.mask[index, first:],
        batch.position[index],
        batch.token[index],
    )


def _concat(old: _Batch, new: _Batch) -> _Batch:
    """One batch of both, the shorter cache left-padded to the longer (masked, never attended)."""
    width = max(old.mask.shape[1], new.mask.shape[1])
    for a, b in zip(_layers(old.cache), _layers(new.cache), strict=True):
        a.keys = torch.cat([_pad_left(a.keys, width, 2), _pad_left(b.keys, width, 2)])
        a.values = torch.cat([_pad_left(a.values, width, 2), _pad_left(b.values, width, 2)])
    return _Batch(
        old.rows + new.rows,
        old.cache,
        torch.cat([_pad_left(old.mask, width, 1), _pad_left(new.mask, width, 1)]),
        torch.cat([old.position, new.position]),
        torch.cat([old.token, new.token]),
    )


def _pad_left(x: Tensor, width: int, dim: int) -> Tensor:
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)
