"""The population engine on a GPU: agreement with PEFT, and throughput against the plain model, PEFT's
mixed-adapter batches and a sequential merged-weights loop, on random-weight models of real shapes.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json --profile $OUT/profile.txt
    PYTHONPATH=. python3 benchmarks/gpu_check.py --device cpu --tiny --json runs/gpu_check_cpu.json

Self-contained, nothing downloaded, no tokenizer. Models: causal LMs built from config dicts of
real shapes (`SHAPES`: SmolLM2-135M, Qwen2.5-0.5B, 1.5B and 7B) with random weights, created on the
device (bf16 on CUDA). Prompts: random token ids, 64 to 100 long, all beginning with the same
32-token "system turn" (what a chat template puts first; the engine prefills it once per candidate).

Lengths: random weights make greedy output degenerate (EOS at once or never). Every method is
given `vocab_size` as its only EOS id, an id no argmax over the vocabulary can return, and the
models' own EOS ids are removed, so every row runs the full `--max-new-tokens`: each method
generates exactly P x B x T tokens and their tokens/s compare directly.

Per shape, first (fp32, a small case of `--check-*` candidates x prompts x tokens, LoRA rank
`--rank` from a random init): the engine's greedy tokens equal PEFT's, candidate by candidate
(`set_adapter` + `generate`), in the `svd` and the `lora` space (`outputs_match`); then in bf16 the
first-step logits of the engine's per-row layers and PEFT's agree within `--bf16-tolerance` of the
largest logit (they differ only in rounding: other batch shapes, other kernels). Then, per case
P x B (`--cases`, default ESSA-sized 32 x 32 and 96 x 100), in `--dtype` (bf16 on CUDA):

  population  `PopulationGenerator.generate_ids` (the continuous engine, `--space` svd), all rows;
  plain       the model without adapters through the same decode loop (`greedy_decode`), same rows;
  peft_mixed  PEFT holding one adapter per candidate, `generate(adapter_names=...)` on chunks of
              `--row-budget` rows; timed on the first chunk at `--peft-tokens` new tokens and at a
              quarter of that, extrapolated to T by the per-step time and to all chunks by rows
              (PEFT loops over a batch's adapters in Python in every layer: the full run takes
              minutes);
  sequential  per candidate: merge B A into the weights, decode its B prompts through the same
              loop; timed on the first `--sequential-candidates` candidates, scaled to P.
  lowrank_in_model_dtype  the population with its per-row low-rank terms in the model's dtype
              (bf16) instead of float32: `lowrank_in_model_dtype_over_population` and the rows whose
              tokens equal the float32 term's decide whether the term may leave float32 on a GPU.

Per method: seconds, generated tokens/s, completions/s, peak GPU memory
(`torch.cuda.max_memory_allocated`, reset per method; on a CPU the process's peak RSS instead),
and MFU: the model FLOPs of the rows (prompt and generated positions once each: 2 x the decoder's
linear weights + 4 x layers x heads x head_dim x context per position, 2 x the vocabulary head per
generated token; the LoRA terms are not counted) over the seconds and `--peak-tflops` (default on
CUDA 989, the dense bf16 peak of an H100 SXM and an H200).

Ratios (tokens/s, at each case; the shape's top-level ones are the first case's):
`population_over_plain`, `population_over_peft_mixed`, `population_over_sequential`; `targets` says
met or missed for >= 0.9, >= 1.5 and >= 10 (docs/performance.md) and `outputs_match`.

Time: the run stops starting work at `--budget-s`. The first case runs for every shape, smallest
shape first; the later cases then run from the largest shape down, each only when its estimate
(from that shape's first case, scaled by rows) fits what is left. What is not run is recorded as
skipped. The JSON is rewritten after every method, so a killed run keeps what it measured.
`--profile FILE` appends torch.profiler tables (`key_averages`) of one population and one plain
call per shape (first case, `--profile-tokens` new tokens): where a target is missed, the why.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
METHODS = ("population", "plain", "peft_mixed", "sequential")

#: The real models' config.json fields that set the cost; the weights are random.
_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
)
SHAPES: dict[str, dict[str, Any]] = {
    name: dict(zip(_FIELDS, values, strict=True))
    for name, values in {
        # name: (type, hidden, layers, heads, kv heads, intermediate, vocab, tied embeddings)
        "smollm2-135m": ("llama", 576, 30, 9, 3, 1536, 49152, True),
        "qwen2.5-0.5b": ("qwen2", 896, 24, 14, 2, 4864, 151936, True),
        "qwen2.5-1.5b": ("qwen2", 1536, 28, 12, 2, 8960, 151936, True),
        "qwen2.5-7b": ("qwen2", 3584, 28, 28, 4, 18944, 152064, False),
    }.items()
}
#: `--tiny`: the same code in seconds on a CPU. The wide init gives greedy decoding clear winners.
TINY_SHAPES: dict[str, dict[str, Any]] = {
    "tiny-llama": {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
        "tie_word_embeddings": True,
        "initializer_range": 0.2,
    },
}
#: What `--tiny` changes: small cases, short prompts and generations, few rows in flight.
TINY_DEFAULTS: dict[str, Any] = {
    "cases": "4x4,6x5",
    "max_new_tokens": 16,
    "prompt_tokens": "20,28",
    "prefix_tokens": 12,
    "row_budget": 16,
    "peft_tokens": 8,
    "check_tokens": 8,
    "profile_tokens": 4,
}
#: Issue 31's targets for the first case (EGGROLL, arXiv 2511.16652: 91% of batch inference).
TARGET_RATIOS = {
    "population_over_plain": 0.9,
    "population_over_peft_mixed": 1.5,
    "population_over_sequential": 10.0,
}
#: Candidate spreads of the fp32 check, per space, large enough that candidates write other tokens
#: (`candidates_differ`): a svd offset moves a singular value of B from 0, a lora one every entry.
CHECK_SPREAD = {"svd": 1.0, "lora": 0.05}
DENSE_BF16_TFLOPS = 989.0  # H100 SXM and H200 spec sheets (1,979 with 2:4 sparsity)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--json", default=None, help="write the results here (rewritten after every method)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--tiny", action="store_true", help="a tiny shape and small cases: seconds on a CPU")
    p.add_argument("--shapes", default=None, help=f"comma-separated subset of {', '.join(SHAPES)}")
    p.add_argument(
        "--cases", default="32x32,96x100", help="PxB cases (candidates x prompts); first is the target"
    )
    p.add_argument("--max-new-tokens", type=int, default=128, help="T: every row generates exactly T tokens")
    p.add_argument("--prompt-tokens", default="64,100", help="prompt length range MIN,MAX")
    p.add_argument("--prefix-tokens", type=int, default=32, help="leading tokens all prompts share")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on CUDA")
    p.add_argument("--space", choices=("svd", "lora"), default="svd", help="space of the throughput cases")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--spread", type=float, default=0.01, help="candidate spread of the throughput cases")
    p.add_argument(
        "--row-budget",
        type=int,
        default=None,
        help="rows in flight, every method (default: the engine's, 1024 on CUDA)",
    )
    p.add_argument("--peft-tokens", type=int, default=24, help="peft_mixed timed up to this many tokens")
    p.add_argument("--sequential-candidates", type=int, default=3, help="sequential: candidates timed")
    p.add_argument("--check-candidates", type=int, default=3)
    p.add_argument("--check-prompts", type=int, default=4)
    p.add_argument("--check-tokens", type=int, default=16)
    p.add_argument("--bf16-tolerance", type=float, default=0.05, help="of the largest reference logit")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="for MFU (default: 989 on CUDA, none on CPU)"
    )
    p.add_argument("--budget-s", type=float, default=330.0, help="start no work after this many seconds")
    p.add_argument("--profile", default=None, help="append torch.profiler tables here")
    p.add_argument("--profile-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
    args = p.parse_args(argv)
    if args.tiny:  # the tiny defaults, unless the flag was given
        for key, value in TINY_DEFAULTS.items():
            if "--" + key.replace("_", "-") not in given:
                setattr(args, key, value)
    table = TINY_SHAPES if args.tiny else SHAPES
    names = args.shapes.split(",") if args.shapes else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown shapes {unknown}; choose from {', '.join(table)}")
    args.shape_names = names
    args.case_list = [_case(c, p) for c in args.cases.split(",") if c]
    lo, hi = (int(x) for x in args.prompt_tokens.split(","))
    if not args.prefix_tokens < lo <= hi:
        p.error(f"--prompt-tokens {lo},{hi} must exceed --prefix-tokens {args.prefix_tokens}")
    args.prompt_range = (lo, hi)
    if args.peft_tokens < 2:
        p.error(f"--peft-tokens must be >= 2 (timed at it and at a quarter of it); got {args.peft_tokens}")
    return args


def _case(text: str, p: argparse.ArgumentParser) -> tuple[int, int]:
    try:
        candidates, prompts = (int(x) for x in text.lower().split("x"))
    except ValueError:
        p.error(f"a case is CANDIDATESxPROMPTS such as 32x32; got {text!r}")
    return candidates, prompts


@dataclass(frozen=True)
class Cost:
    """Model FLOPs of a shape: weights of the decoder's linear maps, of the vocabulary head, and the
    width of attention (layers x heads x head_dim: a (query, key) pair costs 4x this)."""

    linear: int
    head: int
    attention: int

    @classmethod
    def of(cls, shape: dict[str, Any]) -> Cost:
        h, layers, heads = shape["hidden_size"], shape["num_hidden_layers"], shape["num_attention_heads"]
        head_dim = h // heads
        kv = shape["num_key_value_heads"] * head_dim
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * shape["intermediate_size"]  # q, o; k, v; mlp
        return cls(layers * per_layer, shape["vocab_size"] * h, layers * heads * head_dim)

    @property
    def per_token(self) -> int:
        """FLOPs of one generated token, attention aside."""
        return 2 * (self.linear + self.head)

    def row(self, prompt: int, new: int) -> int:
        """FLOPs of one row: its prompt and generated positions once each (the last generated token
        is never fed back), the head at the `new` positions whose next token is taken."""
        positions = prompt + new - 1
        pairs = positions * (positions + 1) // 2
        return 2 * self.linear * positions + 2 * self.head * new + 4 * self.attention * pairs


class IdTokenizer:
    """All `PopulationGenerator` asks of a tokenizer when prompts are token ids: the EOS id."""

    def __init__(self, eos: int) -> None:
        self.eos_token_id = eos
        self.pad_token_id = 0


def engine_tokens(engine: Any, vectors: torch.Tensor, prompts: list[list[int]], new: int) -> tuple[Any, Any]:
    """Greedy tokens [candidate][prompt] and the decode statistics of one engine call."""
    tokens, _, stats = engine.generate_ids(vectors, prompts, new)
    return tokens, stats


def make_prompts(count: int, vocab: int, lengths: tuple[int, int], prefix: int, seed: int) -> list[list[int]]:
    """`count` random prompts of `lengths` tokens, all starting with the same `prefix` tokens."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(1, vocab, (prefix,), generator=g).tolist()
    prompts = []
    for _ in range(count):
        n = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
        prompts.append(head + torch.randint(1, vocab, (n - prefix,), generator=g).tolist())
    return prompts


class Memory:
    """Peak memory of one method: CUDA's allocator high-water mark, or the process's peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.key = "peak_gpu_mb" if device.type == "cuda" else "peak_rss_mb"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):  # resets VmHWM to the current RSS (Linux)
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None


class Bench:
    """One shape on the device: its model, prompts, and the checks and methods run on it."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
        self.name = name
        self.args = args
        self.device = device
        self.shape = (TINY_SHAPES if args.tiny else SHAPES)[name]
        self.cost = Cost.of(self.shape)
        self.vocab = self.shape["vocab_size"]
        self.eos = [self.vocab]  # no argmax over the vocabulary returns it: every row runs T tokens
        self.tokenizer = IdTokenizer(self.vocab)
        most = max(b for _, b in [*args.case_list, (0, args.check_prompts)])
        self.prompts = make_prompts(most, self.vocab, args.prompt_range, args.prefix_tokens, args.seed)
        self.memory = Memory(device)
        self.population_tokens: list[list[list[int]]] | None = None  # the float32 term's, to compare
        self.model = self._build(dtype)

    def _build(self, dtype: torch.dtype) -> Any:
        from transformers import AutoConfig, AutoModelForCausalLM

        fields = dict(self.shape)
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        config.bos_token_id = config.eos_token_id = config.pad_token_id = None
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            torch.manual_seed(self.args.seed)
            with torch.device(self.device):  # initialized where it runs: a 7B model in a second
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = None
        return model.eval().requires_grad_(False)

    def close(self) -> None:
        del self.model
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def space(self, kind: str) -> Any:
        from gfo_llm.lora import init_lora
        from gfo_llm.spaces import LoRASpace, SVDSpace

        lora = init_lora(self.model, TARGETS, self.args.rank, "random", seed=self.args.seed)
        return SVDSpace(lora) if kind == "svd" else LoRASpace(lora)

    def vectors(self, space: Any, count: int, spread: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.args.seed + 1)
        return space.center() + spread * torch.randn(count, space.dim, generator=g)

    def engine(self, space: Any, lowrank_dtype: torch.dtype = torch.float32) -> Any:
        from gfo_llm.batched import PopulationGenerator

        return PopulationGenerator(
            self.model, self.tokenizer, space, row_budget=self.args.row_budget, lowrank_dtype=lowrank_dtype
        )

    def padded(self, prompts: list[list[int]], copies: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and attention mask of the prompts, `copies` times, on the device."""
        width = max(map(len, prompts))
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        return ids.repeat(copies, 1).to(self.device), mask.repeat(copies, 1).to(self.device)

    def hf_generate(self, model: Any, prompts: list[list[int]], new: int, copies: int = 1, **kw: Any) -> Any:
        from transformers import GenerationConfig

        config = GenerationConfig(
            max_new_tokens=new, do_sample=False, num_beams=1, eos_token_id=self.eos, pad_token_id=0
        )
        ids, mask = self.padded(prompts, copies)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **kw)
        return out[:, ids.shape[1] :]

    def decode(self, requests: list[list[int]], new: int, groups: list[int] | None = None) -> list[list[int]]:
        """The plain model (no adapters) through the engine's decode loop."""
        from gfo_llm.decode import greedy_decode

        with torch.inference_mode():
            tokens, _, _ = greedy_decode(
                self.model,
                requests,
                select=lambda rows: None,
                eos=self.eos,
                max_new_tokens=new,
                row_budget=self.args.row_budget,
                groups=groups,
            )
        return tokens

    # ---- correctness -------------------------------------------------------------------------

    def check_fp32(self) -> dict[str, Any]:
        """Greedy tokens of the engine == PEFT's per candidate, in both spaces (model in fp32)."""
        a = self.args
        prompts = self.prompts[: a.check_prompts]
        out: dict[str, Any] = {
            "candidates": a.check_candidates,
            "prompts": len(prompts),
            "tokens": a.check_tokens,
        }
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")  # true fp32 products: no TF32 on the GPU
        try:
            for kind in ("svd", "lora"):
                out[kind] = self._check_space(kind, prompts)
        finally:
            torch.set_float32_matmul_precision(precision)
        return out

    def each_adapter(self, space: Any, vectors: torch.Tensor, call: Callable[[Any], Any]) -> list[Any]:
        """`call(PEFT model)` with each candidate's adapter active in turn: the reference."""
        from gfo_llm.adapters import peft_model

        adapters = {f"c{i}": space.to_lora(v) for i, v in enumerate(vectors)}
        wrapped = peft_model(self.model, adapters)
        try:
            out = []
            for name in adapters:
                wrapped.set_adapter(name)
                with torch.inference_mode():
                    out.append(call(wrapped))
            return out
        finally:
            wrapped.unload()

    def _check_space(self, kind: str, prompts: list[list[int]]) -> dict[str, Any]:
        """One space's fp32 check: the engine's tokens, then PEFT's with each candidate's adapter."""
        a = self.args
        space = self.space(kind)
        vectors = self.vectors(space, a.check_candidates, CHECK_SPREAD[kind])
        engine = self.engine(space)
        try:
            got, _ = engine_tokens(engine, vectors, prompts, a.check_tokens)
        finally:
            engine.close()
        expected = self.each_adapter(
            space, vectors, lambda m: self.hf_generate(m, prompts, a.check_tokens).tolist()
        )
        same = sum(g == e for gs, es in zip(got, expected, strict=True) for g, e in zip(gs, es, strict=True))
        rows = len(vectors) * len(prompts)
        return {
            "rows_matching": f"{same}/{rows}",
            "match": same == rows,
            "spread": CHECK_SPREAD[kind],
            "candidates_differ": len({json.dumps(c) for c in got}) > 1,
        }

    def check_bf16_logits(self) -> dict[str, Any]:
        """First-step logits of the engine's per-row layers against PEFT's, per candidate (model in bf16)."""
        from gfo_llm.layers import Rows

        a = self.args
        prompts = self.prompts[: a.check_prompts]
        space = self.space("svd")
        vectors = self.vectors(space, a.check_candidates, CHECK_SPREAD["svd"])
        n, b = len(vectors), len(prompts)
        ids, mask = self.padded(prompts)
        engine = self.engine(space)
        try:
            population, rows = space.population(vectors), Rows.blocked(0, n, b)
            for name, layer in engine.layers.items():
                layer.select(name, population, rows, space.factors[name])
            with torch.inference_mode():
                got = self.model(
                    input_ids=ids.repeat(n, 1), attention_mask=mask.repeat(n, 1), logits_to_keep=1
                )
            got = got.logits[:, -1].float()
        finally:
            for layer in engine.layers.values():
                layer.clear()
            engine.close()
        expected = self.each_adapter(
            space, vectors, lambda m: m(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
        )
        ref = torch.cat(expected).float()
        diff, scale = float((got - ref).abs().max()), float(ref.abs().max())
        agree = int((got.argmax(-1) == ref.argmax(-1)).sum())
        return {
            "dtype": str(next(self.model.parameters()).dtype),
            "max_abs_diff": diff,
            "max_abs_logit": scale,
            "relative": diff / scale,
            "tolerance": a.bf16_tolerance,
            "within_tolerance": diff <= a.bf16_tolerance * scale,
            "argmax_agree": f"{agree}/{n * b}",
        }

    # ---- throughput --------------------------------------------------------------------------

    def measured(self, seconds: float, rows: int, new: int, prompts: list[list[int]]) -> dict[str, Any]:
        """The figures of a method that generated `rows` rows of `new` tokens in `seconds`."""
        flops = sum(self.cost.row(len(p), new) for p in prompts) * (rows // len(prompts))
        peak = self.args.peak_tflops
        return {
            "seconds": seconds,
            "rows": rows,
            "tokens": rows * new,
            "tokens_per_s": rows * new / seconds,
            "completions_per_s": rows / seconds,
            "mfu": flops / seconds / (peak * 1e12) if peak else None,
            self.memory.key: self.memory.peak_mb(),
        }

    def timed(self, call: Callable[[], Any]) -> tuple[Any, float]:
        self.sync()
        started = time.perf_counter()
        value = call()
        self.sync()
        return value, time.perf_counter() - started

    def population(
        self,
        space: Any,
        vectors: torch.Tensor,
        b: int,
        profile: Profiler | None,
        compare: torch.dtype | None = None,
    ) -> dict[str, Any]:
        """The population engine's rows; with `compare`, its low-rank terms in that dtype, and the
        rows whose tokens equal those of the last call without it (the float32 term)."""
        lowrank_dtype = compare or torch.float32
        a, prompts = self.args, self.prompts[:b]
        engine = self.engine(space, lowrank_dtype)
        try:
            engine_tokens(engine, vectors[:2], prompts, 2)  # warm-up: lazy inits, kernel choices
            self.memory.reset()
            (tokens, stats), seconds = self.timed(
                lambda: engine_tokens(engine, vectors, prompts, a.max_new_tokens)
            )
            result = self.measured(seconds, len(vectors) * b, a.max_new_tokens, prompts)
            lengths = [len(row) for rows in tokens for row in rows]
            result["full_length_rows"] = f"{lengths.count(a.max_new_tokens)}/{len(lengths)}"
            result["tokens"] = sum(lengths)
            result["rows_in_flight"] = engine.row_budget
            result["decode_stats"] = _stats(stats)
            result["lowrank_dtype"] = str(lowrank_dtype).removeprefix("torch.")
            if compare is None:
                self.population_tokens = tokens
            elif self.population_tokens is not None:  # rows whose tokens equal the float32 term's
                pairs = [
                    (x, y) for rows, ref in zip(tokens, self.population_tokens, strict=True)
                    for x, y in zip(rows, ref, strict=True)
                ]  # fmt: skip
                result["same_rows_as_population"] = f"{sum(x == y for x, y in pairs)}/{len(pairs)}"
            if profile is not None:
                profile.run(
                    self, "population", lambda: engine_tokens(engine, vectors, prompts, a.profile_tokens)
                )
        finally:
            engine.close()
        return result

    def plain(self, p: int, b: int, profile: Profiler | None) -> dict[str, Any]:
        a, prompts = self.args, self.prompts[:b]
        requests = [prompts[i % b] for i in range(p * b)]
        groups = [i // b for i in range(p * b)]  # as the engine: the shared prefix once per candidate
        self.decode(requests[: 2 * b], 2, groups[: 2 * b])
        self.memory.reset()
        tokens, seconds = self.timed(lambda: self.decode(requests, a.max_new_tokens, groups))
        result = self.measured(seconds, p * b, a.max_new_tokens, prompts)
        result["tokens"] = sum(map(len, tokens))
        if profile is not None:
            profile.run(self, "plain", lambda: self.decode(requests, a.profile_tokens, groups))
        return result

    def peft_mixed(self, space: Any, vectors: torch.Tensor, b: int) -> dict[str, Any]:
        from gfo_llm.adapters import peft_model

        a, prompts = self.args, self.prompts[:b]
        k = min(len(vectors), max(1, a.row_budget // b))  # candidates of one chunk of row_budget rows
        names = [f"c{i}" for i in range(k)]
        wrapped = peft_model(self.model, {n: space.to_lora(v) for n, v in zip(names, vectors, strict=False)})

        def chunk(new: int) -> Any:
            rows = [n for n in names for _ in range(b)]
            return self.hf_generate(wrapped, prompts, new, copies=k, adapter_names=rows)

        try:
            chunk(2)
            self.memory.reset()
            t = a.max_new_tokens
            if t <= a.peft_tokens:
                _, chunk_seconds = self.timed(lambda: chunk(t))
                how = f"first chunk ({k} candidates) in full"
            else:
                short = max(1, a.peft_tokens // 4)
                _, t_short = self.timed(lambda: chunk(short))
                _, t_long = self.timed(lambda: chunk(a.peft_tokens))
                step = (t_long - t_short) / (a.peft_tokens - short)
                how = (
                    f"first chunk ({k} candidates) at {short} and {a.peft_tokens} new tokens "
                    f"({t_short:.2f} s, {t_long:.2f} s): "
                )
                if step > 0:
                    chunk_seconds = t_long + (t - a.peft_tokens) * step
                    how += f"{step * 1000:.1f} ms a step, extrapolated to {t}"
                else:  # noise (a busy CPU): no per-step time to read, scale the longer run whole
                    chunk_seconds = t_long * t / a.peft_tokens
                    how += f"the longer run scaled to {t} tokens whole (no per-step time: noise)"

            seconds = chunk_seconds * len(vectors) / k
            result = self.measured(seconds, len(vectors) * b, t, prompts)
        finally:
            wrapped.unload()
        result["timed"] = how + (f", scaled to {len(vectors)} candidates" if k < len(vectors) else "")
        return result

    def sequential(self, space: Any, vectors: torch.Tensor, b: int) -> dict[str, Any]:
        a, prompts = self.args, self.prompts[:b]
        n = min(len(vectors), a.sequential_candidates)
        layers = {name: self.model.get_submodule(name) for name in space.modules}
        originals = {name: layer.weight.detach().clone() for name, layer in layers.items()}

        def one(c: int, new: int) -> None:
            with torch.no_grad():
                for name, (lora_a, lora_b) in space.to_lora(vectors[c]).items():
                    w = layers[name].weight
                    delta = lora_b.to(w.device) @ lora_a.to(w.device)
                    w.copy_((originals[name].float() + delta).to(w.dtype))
            self.decode(prompts, new)

        try:
            one(0, 2)
            self.memory.reset()
            _, measured = self.timed(lambda: [one(c, a.max_new_tokens) for c in range(n)])
            result = self.measured(measured * len(vectors) / n, len(vectors) * b, a.max_new_tokens, prompts)
        finally:
            with torch.no_grad():
                for name, layer in layers.items():
                    layer.weight.copy_(originals[name])
        result["timed"] = f"{n} of {len(vectors)} candidates ({measured:.2f} s), scaled to {len(vectors)}"
        return result


class Profiler:
    """Appends a torch.profiler table of one call to a file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self.case = ""

    def run(self, bench: Bench, method: str, call: Callable[[], Any]) -> None:
        from torch.profiler import ProfilerActivity, profile

        cuda = bench.device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        sorts = ("self_device_time_total", "self_cpu_time_total") if cuda else ("self_cpu_time_total",)
        with self.path.open("a") as f:
            try:  # a profiler failure must not cost the measurement it follows
                with profile(activities=activities) as prof:
                    _, seconds = bench.timed(call)
                averages = prof.key_averages()
                for sort in sorts:
                    f.write(f"== {bench.name} {self.case} {method}: {seconds:.2f} s, sorted by {sort} ==\n")
                    f.write(averages.table(sort_by=sort, row_limit=25) + "\n\n")
            except Exception as exc:
                f.write(f"== {bench.name} {self.case} {method}: profiler failed: {_error(exc)} ==\n\n")


def _stats(stats: Any) -> dict[str, Any] | None:
    if stats is None:
        return None
    keys = ("prefill_calls", "decode_steps", "peak_rows", "prefill_positions", "decode_rows")
    seconds = ("prefill_seconds", "decode_seconds", "cache_seconds", "host_seconds")
    return {k: getattr(stats, k) for k in keys + seconds if hasattr(stats, k)}


def _error(exc: BaseException) -> str:
    traceback.print_exc()
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _timed_rows(method: str, p: int, b: int, args: argparse.Namespace) -> int:
    """Rows a method actually runs at P x B (what its time scales with)."""
    if method == "peft_mixed":
        return min(p, max(1, args.row_budget // b)) * b
    if method == "sequential":
        return min(p, args.sequential_candidates) * b
    return p * b


class Run:
    """The record, the clock and the order of the work."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        from gfo_llm.batched import CPU_ROW_BUDGET, GPU_MAX_ROWS
        from gfo_llm.model import resolve_device

        self.device = resolve_device(args.device)
        if args.row_budget is None:  # what problem.row_budget=none gives (on CUDA: when memory holds it)
            args.row_budget = GPU_MAX_ROWS if self.device.type == "cuda" else CPU_ROW_BUDGET
        if args.dtype == "auto":
            args.dtype = "bf16" if self.device.type == "cuda" else "fp32"
        if args.peak_tflops is None and self.device.type == "cuda":
            args.peak_tflops = DENSE_BF16_TFLOPS
        self.dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
        self.profile = Profiler(args.profile) if args.profile else None
        self.walls: dict[str, dict[str, float]] = {}  # shape -> method -> wall seconds at the first case
        self.record: dict[str, Any] = {
            "device": _device_name(self.device),
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "peft": _version("peft"),
            "placement": "the model built on resolve_device(--device); PopulationGenerator follows it",
            "config": {
                k: v for k, v in vars(args).items() if k not in ("shape_names", "case_list", "prompt_range")
            },
            "shapes": {},
            "skipped": [],
        }

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def save(self) -> None:
        self.record["elapsed_s"] = time.perf_counter() - self.started
        self.record["targets"] = targets(self.record)
        if self.args.json:
            path = Path(self.args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(self.record, indent=2))
            tmp.replace(path)

    def skip(self, where: dict[str, Any], label: str, reason: str) -> None:
        where["skipped"] = reason
        self.record["skipped"].append(f"{label}: {reason}")
        print(f"  skipped {label}: {reason}", flush=True)
        self.save()

    def visit(self, name: str, case: tuple[int, int], first: bool, estimate: float | None) -> None:
        """One shape at one case: the checks (first case only), then every method."""
        a = self.args
        p, b = case
        label = f"P{p}xB{b}"
        entry = self.record["shapes"].setdefault(name, self.entry(name))
        cases = entry["cases"]
        cases[label] = {"methods": {}}
        if self.left() <= 0:
            self.skip(cases[label], f"{name} {label}", "budget spent")
            return
        if estimate is not None and estimate > self.left():
            self.skip(
                cases[label], f"{name} {label}", f"budget: ~{estimate:.0f} s needed, {self.left():.0f} s left"
            )
            return
        print(f"{name} {label} x {a.max_new_tokens} new tokens ({self.left():.0f} s left)", flush=True)
        started = time.perf_counter()
        bench = Bench(name, a, self.device, torch.float32 if first else self.dtype)
        try:
            if first:
                self.checks(bench, entry)
            bench.model.to(self.dtype)
            walls = self.walls.setdefault(name, {}) if first else {}
            if self.profile is not None:
                self.profile.case = label
            space = bench.space(a.space)
            vectors = bench.vectors(space, p, a.spread)
            runs: dict[str, Callable[[], dict[str, Any]]] = {
                "population": lambda: bench.population(space, vectors, b, self.profile if first else None),
                # Whether the low-rank term may leave float32 on this device: the same rows with the
                # term in the model's dtype (issue 30 asks for the decision by measurement).
                "lowrank_in_model_dtype": lambda: bench.population(
                    space, vectors, b, None, bench.model.dtype
                ),
                "plain": lambda: bench.plain(p, b, self.profile if first else None),
                "peft_mixed": lambda: bench.peft_mixed(space, vectors, b),
                "sequential": lambda: bench.sequential(space, vectors, b),
            }
            methods = cases[label]["methods"]
            for method, call in runs.items():
                if self.left() <= 0:
                    self.skip(methods.setdefault(method, {}), f"{name} {label} {method}", "budget spent")
                    continue
                t0 = time.perf_counter()
                try:
                    methods[method] = call()
                except Exception as exc:  # one failure must not lose the rest of a GPU run
                    methods[method] = {"error": _error(exc)}
                walls[method] = time.perf_counter() - t0
                _print_method(method, methods[method])
                self.summarize(entry, label, first)
                self.save()
        finally:
            bench.close()
        cases[label]["wall_s"] = time.perf_counter() - started
        self.save()

    def entry(self, name: str) -> dict[str, Any]:
        """A shape's record, its headline keys first."""
        shape = (TINY_SHAPES if self.args.tiny else SHAPES)[name]
        cost = Cost.of(shape)
        ratios = {f"population_over_{m}": None for m in METHODS[1:]}
        return {
            "config": shape,
            "outputs_match": None,
            **ratios,
            "peak_gpu_mb": None,
            "peak_rss_mb": None,
            "mfu": None,
            "params_linear": cost.linear,
            "params_head": cost.head,
            "flops_per_token": cost.per_token,
            "cost_basis": _COST,
            "correctness": {},
            "cases": {},
        }

    def checks(self, bench: Bench, entry: dict[str, Any]) -> None:
        correctness = entry["correctness"]
        try:
            correctness["fp32"] = bench.check_fp32()
            entry["outputs_match"] = all(correctness["fp32"][k]["match"] for k in ("svd", "lora"))
        except Exception as exc:
            correctness["fp32"] = {"error": _error(exc)}
            entry["outputs_match"] = None
        bench.model.to(torch.bfloat16)
        try:
            correctness["bf16_logits"] = bench.check_bf16_logits()
        except Exception as exc:
            correctness["bf16_logits"] = {"error": _error(exc)}
        print(f"  outputs_match {entry['outputs_match']}: {json.dumps(correctness)}", flush=True)
        self.save()

    def summarize(self, entry: dict[str, Any], label: str, first: bool) -> None:
        """The case's ratios; the first case's also at the shape's top level."""
        case = entry["cases"][label]
        methods = case["methods"]
        rate = {m: r.get("tokens_per_s") for m, r in methods.items()}
        population = rate.get("population")
        for other in METHODS[1:]:
            value = population / rate[other] if population and rate.get(other) else None
            case[f"population_over_{other}"] = value
        lowrank = rate.get("lowrank_in_model_dtype")
        case["lowrank_in_model_dtype_over_population"] = (
            lowrank / population if lowrank and population else None
        )
        memory = Memory(self.device).key
        case[memory] = {m: r.get(memory) for m, r in methods.items()}
        case["mfu"] = {m: r.get("mfu") for m, r in methods.items()}
        if not first:
            return
        for other in METHODS[1:]:
            entry[f"population_over_{other}"] = case[f"population_over_{other}"]
        pop = methods.get("population", {})
        entry["peak_gpu_mb"] = pop.get("peak_gpu_mb")
        entry["peak_rss_mb"] = pop.get("peak_rss_mb")
        entry["mfu"] = pop.get("mfu")

    def estimate(self, name: str, case: tuple[int, int], first_case: tuple[int, int]) -> float | None:
        """Seconds a later case of a shape should take: its first case's walls scaled by rows."""
        walls = self.walls.get(name)
        if not walls:
            return None
        p, b = case
        p0, b0 = first_case
        return sum(
            wall * _timed_rows(m, p, b, self.args) / _timed_rows(m, p0, b0, self.args)
            for m, wall in walls.items()
        )


_COST = (
    "model FLOPs: 2 x linear weights per position, 4 x layers x heads x head_dim per (query, key) "
    "pair, 2 x the vocabulary head per generated token; LoRA terms not counted"
)


def _print_method(method: str, r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"  {method:<11} error: {r['error']}", flush=True)
        return
    mfu = f"{r['mfu']:.4f}" if r.get("mfu") is not None else "-"
    memory = r.get("peak_gpu_mb", r.get("peak_rss_mb"))
    mem = f"{memory:.0f} MB" if memory is not None else "-"
    print(
        f"  {method:<11} {r['seconds']:8.2f} s {r['tokens_per_s']:10.1f} tokens/s "
        f"{r['completions_per_s']:8.2f} completions/s  mfu {mfu}  peak {mem}",
        flush=True,
    )


def targets(record: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Met or missed per shape, at the first case."""

    def verdict(value: Any, ok: Callable[[Any], bool]) -> str:
        return "not measured" if value is None else "met" if ok(value) else "missed"

    out: dict[str, dict[str, str]] = {}
    for key, threshold in TARGET_RATIOS.items():
        out[f"{key} >= {threshold:g}"] = {
            name: verdict(shape.get(key), lambda v, t=threshold: v >= t)
            for name, shape in record["shapes"].items()
        }
    out["outputs_match"] = {
        name: verdict(shape.get("outputs_match"), bool) for name, shape in record["shapes"].items()
    }
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from gfo_llm.model import cpu_description

    return cpu_description()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    run = Run(args)
    if run.device.type == "cpu" and not args.tiny and args.shapes is None:
        raise SystemExit("on a CPU the real shapes take hours: pass --tiny, or --shapes NAME to insist")
    print(
        f"gpu_check on {run.record['device']}: torch {torch.__version__}, {args.dtype}, "
        f"budget {args.budget_s:.0f} s, {args.row_budget} rows in flight",
        flush=True,
    )
    run.save()
    if run.device.type == "cpu":
        from gfo.threads import one_thread

        with one_thread():  # small products lose to OpenMP's spinning workers on a busy CPU
            return _work(run)
    return _work(run)


def _work(run: Run) -> dict[str, Any]:
    args = run.args
    first_case, later = args.case_list[0], args.case_list[1:]
    previous: tuple[str, float] | None = None
    for name in args.shape_names:  # the target case everywhere first, smallest shape first
        estimate = None
        if previous is not None:  # rough: the last shape's time, scaled by the root of the FLOPs ratio
            shapes = TINY_SHAPES if args.tiny else SHAPES
            ratio = Cost.of(shapes[name]).per_token / Cost.of(shapes[previous[0]]).per_token
            estimate = previous[1] * math.sqrt(ratio)
        run.visit(name, first_case, first=True, estimate=estimate)
        wall = run.record["shapes"][name]["cases"][_label(first_case)].get("wall_s")
        if wall is not None:
            previous = (name, wall)
    for case in later:  # then the larger cases, largest shape first, where the budget allows
        for name in reversed(args.shape_names):
            if name not in run.walls:
                cases = run.record["shapes"].setdefault(name, {}).setdefault("cases", {})
                run.skip(
                    cases.setdefault(_label(case), {}), f"{name} {_label(case)}", "its first case did not run"
                )
                continue
            run.visit(name, case, first=False, estimate=run.estimate(name, case, first_case))
    run.save()
    print(json.dumps(run.record["targets"], indent=2), flush=True)
    return run.record


def _label(case: tuple[int, int]) -> str:
    return f"P{case[0]}xB{case[1]}"


if __name__ == "__main__":
    main()
