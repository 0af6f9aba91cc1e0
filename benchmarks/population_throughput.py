"""Population throughput: gfo's continuous-batching engine against today's `generate` path, the
plain base model, PEFT's mixed-adapter batches and the model's prefill ceiling, on a task's real
chat-templated prompts and candidates at the problem's default spread.

    python benchmarks/population_throughput.py --workload arithmetic --popsize 16 --prompts 16 \\
        --max-new-tokens 32 --json runs/throughput-arith.json
    GFO_DATA_DIR=../shared/data python benchmarks/population_throughput.py --workload gsm8k \\
        --popsize 8 --prompts 8 --max-new-tokens 256 --json runs/throughput-gsm8k.json

Methods, each generating the same P x B rows greedily with the same cap:
  engine       PopulationGenerator(engine="continuous"): finished rows leave the batch, free slots
               refill, the shared prompt prefix is prefilled once per candidate; the task's stop
               patterns end a row after its answer line;
  hf_generate  PopulationGenerator(engine="hf"): one `model.generate` per chunk of row_budget rows
               (each chunk runs until its longest row stops), the same stop rule applied after;
  base         the original model (no adapters) through the continuous engine;
  peft_mixed   PEFT with P adapters loaded, one `generate(adapter_names=...)` per chunk (no stop
               patterns: PEFT has none).
`ceiling_tokens_per_s` is the model's forward tokens/s over one large prefill batch (the best of a
few batch shapes): the compute a forward pass reaches on this machine.

Per method: completions/s, generated tokens/s (up to and including EOS), forward tokens/s (prompt
+ generated tokens, each counted once; padding and recomputation excluded), best of `--repeats`
runs interleaved in one process after a warm-up; peak RSS in a fresh subprocess per method (the
high-water mark, reset after loading and setup, so it includes weights, KV cache and activations).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

METHODS = ("engine", "hf_generate", "base", "peft_mixed")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
Run = Callable[[int], tuple[list[list[str]], list[list[int]]]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--workload", choices=("arithmetic", "gsm8k"), default="arithmetic")
    p.add_argument("--popsize", type=int, default=16, help="candidates P")
    p.add_argument("--prompts", type=int, default=16, help="prompts B per candidate")
    p.add_argument("--max-new-tokens", type=int, default=32, help="generation cap T")
    p.add_argument("--row-budget", type=int, default=64, help="rows in flight (engine) / per generate call")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--space", choices=("svd", "lora"), default="svd")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--stdev", type=float, default=None, help="candidate spread (default: the problem's)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per method (best is reported)")
    p.add_argument("--methods", default=",".join(METHODS), help="subset of " + ",".join(METHODS))
    p.add_argument("--model", default=None, help="model (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-rss", action="store_true", help="skip the per-method memory subprocesses")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    return args


class Bench:
    """The model, the task's prompts, the candidates and one runner per method."""

    def __init__(self, args: argparse.Namespace) -> None:
        from gfo.registry import PROBLEMS
        from gfo_llm.model import load_model

        self.args = args
        problem_class: Any = PROBLEMS.get(args.workload)
        self.config = problem_class.Config(model=args.model, dtype=args.dtype)
        self.task = problem_class.task_class(self.config)
        self.model, self.tokenizer = load_model(args.model, args.dtype)
        self.original = copy.deepcopy(self.model)
        split = "train" if args.workload == "arithmetic" else "test"
        examples = list(self.task.examples(split))[: args.prompts]
        if len(examples) < args.prompts:
            raise SystemExit(f"only {len(examples)} prompts available; use --prompts {len(examples)}")
        from gfo_llm.model import chat_prompt

        self.prompts = [chat_prompt(self.tokenizer, self.task.prompt(ex)) for ex in examples]
        self.prompt_tokens = [
            len(ids) for ids in self.tokenizer(self.prompts, add_special_tokens=False)["input_ids"]
        ]
        from gfo_llm.lora import init_lora
        from gfo_llm.spaces import LoRASpace, SVDSpace

        self.lora = init_lora(self.model, TARGETS, args.rank, "pissa")
        self.space = SVDSpace(self.lora) if args.space == "svd" else LoRASpace(self.lora)
        spread = args.stdev if args.stdev is not None else self.config.stdev
        noise = torch.randn(args.popsize, self.space.dim, generator=torch.Generator().manual_seed(0))
        self.population = self.space.center() + spread * noise
        self.engine: Any = None

    def setup(self, method: str) -> Run:
        return {
            "engine": lambda: self._generator("continuous"),
            "hf_generate": lambda: self._generator("hf"),
            "base": self._base,
            "peft_mixed": self._peft_mixed,
        }[method]()

    def _generator(self, kind: str) -> Run:
        from gfo_llm.batched import PopulationGenerator

        if self.engine is None:
            self.engine = PopulationGenerator(self.model, self.tokenizer, self.space, self.args.row_budget)

        def run(tokens: int) -> Any:
            self.engine.engine = kind
            result = self.engine.generate(self.population, self.prompts, tokens, self.task.stop)
            return result.completions, result.num_tokens

        return run

    def _base(self) -> Run:
        from gfo_llm.batched import eos_ids
        from gfo_llm.decode import greedy_decode, stop_matcher

        ids = self.tokenizer(self.prompts, add_special_tokens=False)["input_ids"]
        p, b = self.args.popsize, len(ids)

        def run(tokens: int) -> Any:
            with torch.inference_mode():
                out, _, _ = greedy_decode(
                    self.original,
                    [ids[i % b] for i in range(p * b)],
                    select=lambda rows: None,
                    eos=eos_ids(self.original, self.tokenizer),
                    max_new_tokens=tokens,
                    row_budget=self.args.row_budget,
                    stop=stop_matcher(self.task.stop, self.tokenizer),
                    groups=[i // b for i in range(p * b)],  # as the engine does: a prefix per candidate
                )
            texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
            return _grid(texts, b), _grid([len(t) for t in out], b)

        return run

    def _peft_mixed(self) -> Run:
        from transformers import GenerationConfig

        from gfo_llm.adapters import peft_model
        from gfo_llm.batched import decode_rows, eos_ids

        names = [f"c{i}" for i in range(self.args.popsize)]
        adapters = {n: self.space.to_lora(v) for n, v in zip(names, self.population, strict=True)}
        residual = copy.deepcopy(self.model)
        from gfo_llm.layers import uninstall

        uninstall(residual)
        wrapped = peft_model(residual, adapters)
        eos = eos_ids(self.model, self.tokenizer)
        b, chunk = len(self.prompts), max(1, self.args.row_budget // len(self.prompts))

        def run(tokens: int) -> Any:
            config = GenerationConfig(
                max_new_tokens=tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=eos,
            )
            enc = self.tokenizer(self.prompts, padding=True, return_tensors="pt", add_special_tokens=False)
            texts: list[str] = []
            counts: list[int] = []
            for c0 in range(0, len(names), chunk):
                group = names[c0 : c0 + chunk]
                with torch.inference_mode():
                    out = wrapped.generate(
                        input_ids=enc["input_ids"].repeat(len(group), 1),
                        attention_mask=enc["attention_mask"].repeat(len(group), 1),
                        generation_config=config,
                        adapter_names=[n for n in group for _ in range(b)],
                    )
                t, c, _ = decode_rows(self.tokenizer, out[:, enc["input_ids"].shape[1] :], eos)
                texts += t
                counts += c
            return _grid(texts, b), _grid(counts, b)

        return run

    def ceiling(self) -> dict[str, Any]:
        """Forward tokens/s of the base model over large prefill batches of the task's prompts."""
        from gfo_llm.decode import last_position

        best: dict[str, Any] = {"tokens_per_s": 0.0}
        for rows in (16, 64, 256):
            enc = self.tokenizer(
                (self.prompts * rows)[:rows], padding=True, return_tensors="pt", add_special_tokens=False
            )
            # The last position as an index, as the engine asks for it: with the count 1 torch
            # copies the vocabulary head once per row, and the "ceiling" fell below the engine.
            last = last_position(enc["input_ids"].shape[1], enc["input_ids"].device)
            with torch.inference_mode():
                self.original(**{k: v[:2] for k, v in enc.items()}, logits_to_keep=last)
                started = time.perf_counter()
                self.original(**enc, logits_to_keep=last)
                seconds = time.perf_counter() - started
            rate = int(enc["attention_mask"].sum()) / seconds
            if rate > best["tokens_per_s"]:
                best = {"tokens_per_s": rate, "shape": list(enc["input_ids"].shape)}
        return best


def _grid(values: list[Any], per: int) -> list[list[Any]]:
    return [values[i : i + per] for i in range(0, len(values), per)]


def timed(bench: Bench, run: Run, tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    texts, counts = run(tokens)
    seconds = time.perf_counter() - start
    generated = sum(map(sum, counts))
    rows = sum(map(len, counts))
    prompt = sum(bench.prompt_tokens) * len(counts)
    return {
        "seconds": seconds,
        "completions_per_s": rows / seconds,
        "tokens_per_s": generated / seconds,
        "forward_tokens_per_s": (prompt + generated) / seconds,
        "tokens": generated,
        "capped_rows": sum(c >= tokens for row in counts for c in row),
        "rows": rows,
        "completions": texts,
    }


def rss_child(args: argparse.Namespace) -> None:
    """One method in a fresh process: set up, reset the RSS high-water mark, run once, report."""
    bench = Bench(args)
    run = bench.setup(args.rss_child)
    run(4)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    run(args.max_new_tokens)
    print(json.dumps({"peak_rss_mb": _status_kb("VmHWM") / 1024}))


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def cpu_model() -> str:
    from gfo_llm.model import cpu_description

    return cpu_description()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from gfo_llm.model import resolve_dtype

    args.dtype = resolve_dtype(args.dtype)
    if args.rss_child:
        rss_child(args)
        return {}
    print(
        f"{args.workload}: P={args.popsize} B={args.prompts} T={args.max_new_tokens} {args.dtype} "
        f"space={args.space} rows in flight={args.row_budget} threads={torch.get_num_threads()} "
        f"cpu={cpu_model()}",
        flush=True,
    )
    bench = Bench(args)
    runners = {m: bench.setup(m) for m in args.methods}
    for run in runners.values():
        run(4)  # warm-up: first-call allocations and kernel selection
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    for r in range(args.repeats):
        for m, run in runners.items():
            runs[m].append(timed(bench, run, args.max_new_tokens))
            e = runs[m][-1]
            print(
                f"  run {r + 1} {m:<12} {e['completions_per_s']:6.2f} completions/s "
                f"{e['tokens_per_s']:7.1f} tokens/s",
                flush=True,
            )
    ceiling = bench.ceiling()
    results: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "rss_child"},
        "cpu": cpu_model(),
        "ceiling_tokens_per_s": ceiling["tokens_per_s"],
        "ceiling_shape": ceiling["shape"],
        "methods": {},
    }
    for m, entries in runs.items():
        best = max(entries, key=lambda e: e["completions_per_s"])
        results["methods"][m] = {k: v for k, v in best.items() if k != "completions"}
    if not args.no_rss:
        for m in args.methods:
            child = [
                sys.executable,
                __file__,
                *(argv if argv is not None else sys.argv[1:]),
                "--rss-child",
                m,
            ]
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
            results["methods"][m].update(json.loads(out.strip().splitlines()[-1]))
            print(f"  rss {m:<12} {results['methods'][m]['peak_rss_mb']:7.0f} MB", flush=True)
    methods = results["methods"]
    if {"engine", "hf_generate"} <= set(methods):
        results["engine_over_hf_generate"] = (
            methods["engine"]["completions_per_s"] / methods["hf_generate"]["completions_per_s"]
        )
        same = sum(
            x == y
            for a, b in zip(
                runs["engine"][-1]["completions"], runs["hf_generate"][-1]["completions"], strict=True
            )
            for x, y in zip(a, b, strict=True)
        )
        results["rows_matching_hf_generate"] = f"{same}/{methods['engine']['rows']}"
        results["outputs_match"] = same == methods["engine"]["rows"]
    if {"engine", "base"} <= set(methods):
        results["engine_over_base"] = methods["engine"]["tokens_per_s"] / methods["base"]["tokens_per_s"]
        if not args.no_rss:
            results["rss_engine_over_base"] = (
                methods["engine"]["peak_rss_mb"] / methods["base"]["peak_rss_mb"]
            )
    if "engine" in methods:
        results["ceiling_fraction"] = methods["engine"]["forward_tokens_per_s"] / ceiling["tokens_per_s"]
    print_table(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def print_table(results: dict[str, Any]) -> None:
    columns = (
        ("compl/s", 9),
        ("tokens/s", 10),
        ("fwd tok/s", 11),
        ("tokens", 8),
        ("capped", 10),
        ("RSS MB", 8),
    )
    print(f"{'method':<13}" + "".join(f"{name:>{width}}" for name, width in columns))
    for m, r in results["methods"].items():
        rss = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "-"
        print(
            f"{m:<13}{r['completions_per_s']:>9.2f}{r['tokens_per_s']:>10.1f}{r['forward_tokens_per_s']:>11.1f}"
            f"{r['tokens']:>8}{r['capped_rows']:>6}/{r['rows']:<4}{rss:>8}"
        )
    print(
        f"ceiling_tokens_per_s = {results['ceiling_tokens_per_s']:.1f} (prefill {results['ceiling_shape']})"
    )
    for k in ("engine_over_hf_generate", "engine_over_base", "ceiling_fraction", "rss_engine_over_base"):
        if k in results:
            print(f"{k} = {results[k]:.2f}")
    for k in ("outputs_match", "rows_matching_hf_generate"):
        if k in results:
            print(f"{k} = {results[k]}")


if __name__ == "__main__":
    main()
