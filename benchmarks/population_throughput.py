"""Population throughput: gfo's batched per-row LoRA engine against plain batching, a sequential
per-candidate loop and PEFT's mixed-adapter batches, on the same prompts and candidates.

    python benchmarks/population_throughput.py                       # P=8, B=8, T=64, auto dtype, svd
    python benchmarks/population_throughput.py --space lora --json runs/throughput.json
    GFO_DATA_DIR=../shared/data python benchmarks/population_throughput.py --prompts 16

Methods, each generating the same P x B rows greedily with the same max_new_tokens:
  base        the original model, the P x B rows in one plain batch (no adapters): the ceiling;
  batched     gfo's PopulationGenerator: one generate call, each row through its candidate's LoRA;
  sequential  one candidate at a time: its LoRA merged into the weights, B rows per generate call;
  peft_mixed  PEFT with P adapters loaded, one generate call with `adapter_names=` per row.

Throughput: all methods run in this process, interleaved (base, batched, sequential, peft_mixed,
then again), after one short warm-up each; the best of `--repeats` runs is reported. Tokens are
counted up to and including each row's EOS (padding after EOS excluded); `row_steps_per_s` counts
rows x decode steps instead, which does not depend on where rows stop. `tokens_per_cpu_s` divides
by the process's CPU time: on a machine shared with other jobs it moves much less than wall time.
Memory: each method runs once more in a fresh subprocess; its peak RSS is the process's high-water
mark during that run (reset with /proc/self/clear_refs after loading and setup), so it includes
the weights, the KV cache and the activations, and nothing left over from other methods.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

METHODS = ("base", "batched", "sequential", "peft_mixed")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
QUESTIONS = [
    "What is 17 + 25 - 8?",
    "What is 63 - 29 + 4?",
    "A shop sells 12 apples in the morning and 9 in the afternoon. How many apples does it sell?",
    "What is 48 + 7 - 19?",
    "Tom has 35 marbles and gives 12 to his sister. How many marbles does Tom have left?",
    "What is 91 - 46 + 13?",
    "A train travels 60 km in the first hour and 45 km in the second hour. How far does it travel?",
    "What is 28 + 39 - 15?",
    "Sara reads 14 pages on Monday and 23 pages on Tuesday. How many pages does she read in total?",
    "What is 75 - 38 + 6?",
    "What is 54 + 18 - 27?",
    "A box holds 40 pencils. 17 are red and the rest are blue. How many pencils are blue?",
    "What is 82 - 57 + 9?",
    "What is 36 + 44 - 21?",
    "Ben saves 25 dollars a week for 3 weeks. How much does he save?",
    "What is 67 - 18 + 22?",
]
SYSTEM = "Solve the problem. End your answer with 'The answer is N.'"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--popsize", type=int, default=8, help="candidates P")
    p.add_argument("--prompts", type=int, default=8, help="prompts B per candidate")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation cap T")
    p.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 where it is native (GPU, AVX512-BF16/AMX CPU), else fp32",
    )
    p.add_argument("--space", choices=("svd", "lora"), default="svd")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--stdev", type=float, default=0.02, help="spread of the candidates around the centre")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (best is reported)")
    p.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS)
    )
    p.add_argument("--model", default=None, help="model (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--data-dir", default=None, help="folder with gsm8k/test.jsonl (default $GFO_DATA_DIR)")
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


def questions(args: argparse.Namespace) -> list[str]:
    import os

    data_dir = args.data_dir or os.environ.get("GFO_DATA_DIR")
    if data_dir and (Path(data_dir) / "gsm8k" / "test.jsonl").is_file():
        with open(Path(data_dir) / "gsm8k" / "test.jsonl") as f:
            items = [json.loads(line)["question"] for _, line in zip(range(args.prompts), f, strict=False)]
    else:
        items = QUESTIONS[: args.prompts]
    if len(items) < args.prompts:
        raise SystemExit(f"only {len(items)} prompts available; use --prompts {len(items)} or --data-dir")
    return items


class Bench:
    """The model, the candidates and one runner per method, built lazily (a subprocess builds one)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from gfo_llm.model import chat_prompt, load_model, resolve_dtype

        self.args = args
        self.model, self.tokenizer = load_model(args.model, resolve_dtype(args.dtype))
        self.prompts = [chat_prompt(self.tokenizer, q, SYSTEM) for q in questions(args)]
        self._space: Any = None
        self.original = self.model

    def setup(self, method: str) -> Callable[[int], tuple[list[list[str]], list[list[int]], int]]:
        return {
            "base": self._base,
            "batched": self._batched,
            "sequential": self._sequential,
            "peft_mixed": self._peft_mixed,
        }[method]()

    def space(self) -> Any:
        """PiSSA init (residualizes `self.model` in place), the space and the P candidates."""
        from gfo_llm.spaces import LoRASpace, SVDSpace, init_lora

        if self._space is None:
            if "base" in self.args.methods and not self.args.rss_child:
                self.original = copy.deepcopy(self.model)  # `base` runs the untouched model
            self.lora = init_lora(self.model, TARGETS, self.args.rank, "pissa")
            self._space = SVDSpace(self.lora) if self.args.space == "svd" else LoRASpace(self.lora)
            generator = torch.Generator().manual_seed(0)
            noise = torch.randn(self.args.popsize, self._space.dim, generator=generator)
            self.population = self._space.center() + self.args.stdev * noise
        return self._space

    def _plain_model(self) -> Any:
        """The residual model without gfo's wrappers (a copy only if `batched` installed them)."""
        from gfo_llm.batched import PopulationLinear, uninstall

        if not any(isinstance(m, PopulationLinear) for m in self.model.modules()):
            return self.model
        model = copy.deepcopy(self.model)
        uninstall(model)
        return model

    def _base(self) -> Callable[[int], Any]:
        ids, mask = self._encode(self.args.popsize)
        return lambda tokens: self._generate(self.original, ids, mask, tokens)

    def _batched(self) -> Callable[[int], Any]:
        from gfo_llm.batched import PopulationGenerator

        space = self.space()
        engine = PopulationGenerator(
            self.model, self.tokenizer, space, row_budget=self.args.popsize * self.args.prompts
        )

        def run(tokens: int) -> Any:
            result = engine.generate(self.population, self.prompts, tokens)
            steps = max(max(row) for row in result.num_tokens)
            return result.completions, result.num_tokens, steps

        return run

    def _sequential(self) -> Callable[[int], Any]:
        space = self.space()
        model = self._plain_model()
        ids, mask = self._encode(1)
        layers = {name: model.get_submodule(name) for name in space.modules}
        residual = {name: layer.weight.detach().clone() for name, layer in layers.items()}

        def run(tokens: int) -> Any:
            texts, counts, steps = [], [], 0
            for vector in self.population:
                for name, (a, b) in space.to_lora(vector).items():
                    merged = residual[name].to(torch.float32) + b @ a
                    layers[name].weight.copy_(merged.to(residual[name].dtype))
                t, c, s = self._generate(model, ids, mask, tokens)
                texts += t
                counts += c
                steps = max(steps, s)
            for name, layer in layers.items():
                layer.weight.copy_(residual[name])
            return texts, counts, steps

        return run

    def _peft_mixed(self) -> Callable[[int], Any]:
        from gfo_llm.adapters import peft_model

        space = self.space()
        names = [f"c{i}" for i in range(self.args.popsize)]
        adapters = {n: space.to_lora(v) for n, v in zip(names, self.population, strict=True)}
        wrapped = peft_model(self._plain_model(), adapters)
        ids, mask = self._encode(self.args.popsize)
        adapter_names = [n for n in names for _ in range(self.args.prompts)]
        return lambda tokens: self._generate(wrapped, ids, mask, tokens, adapter_names=adapter_names)

    def _encode(self, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(self.prompts, padding=True, return_tensors="pt", add_special_tokens=False)
        return enc["input_ids"].repeat(copies, 1), enc["attention_mask"].repeat(copies, 1)

    def _generate(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, tokens: int, **kwargs: Any) -> Any:
        from transformers import GenerationConfig

        from gfo_llm.batched import _eos_ids, decode_rows

        eos = _eos_ids(self.model, self.tokenizer)
        config = GenerationConfig(
            max_new_tokens=tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **kwargs)
        new = out[:, ids.shape[1] :]
        texts, counts, _ = decode_rows(self.tokenizer, new, eos)
        b = self.args.prompts
        by_candidate = [texts[i : i + b] for i in range(0, len(texts), b)]
        return by_candidate, [counts[i : i + b] for i in range(0, len(counts), b)], new.shape[1]


def timed(run: Callable[[int], Any], tokens: int, rows: int) -> dict[str, Any]:
    start, cpu_start = time.perf_counter(), time.process_time()
    texts, counts, steps = run(tokens)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    generated = sum(map(sum, counts))
    capped = sum(c >= tokens for row in counts for c in row)
    return {
        "seconds": seconds,
        "tokens": generated,
        "tokens_per_s": generated / seconds,
        "tokens_per_cpu_s": generated / cpu_seconds,
        "row_steps_per_s": rows * steps / seconds if steps else 0.0,
        "capped_rows": capped,
        "completions": texts,
    }


def rss_child(args: argparse.Namespace) -> None:
    """One method in a fresh process: set up, reset the RSS high-water mark, run once, report."""
    bench = Bench(args)
    run = bench.setup(args.rss_child)
    run(4)  # the same warm-up as the timed runs get
    setup_rss = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    run(args.max_new_tokens)
    print(json.dumps({"peak_rss_mb": _status_kb("VmHWM") / 1024, "setup_rss_mb": setup_rss / 1024}))


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return {}
    rows = args.popsize * args.prompts
    from gfo_llm.model import resolve_dtype

    args.dtype = resolve_dtype(args.dtype)
    print(
        f"P={args.popsize} B={args.prompts} T={args.max_new_tokens} {args.dtype} space={args.space} "
        f"rank={args.rank} threads={torch.get_num_threads()}",
        flush=True,
    )
    bench = Bench(args)
    runners = {m: bench.setup(m) for m in args.methods}
    for run in runners.values():
        run(4)  # warm-up: first-call allocations and kernel selection
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    for r in range(args.repeats):
        for m, run in runners.items():
            runs[m].append(timed(run, args.max_new_tokens, rows))
            print(f"  run {r + 1} {m:<11} {runs[m][-1]['tokens_per_s']:7.1f} tokens/s", flush=True)

    results: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "rss_child"},
        "methods": {},
    }
    for m, entries in runs.items():
        best = max(entries, key=lambda e: e["tokens_per_s"])
        results["methods"][m] = {
            "tokens_per_s": best["tokens_per_s"],
            "tokens_per_s_median": statistics.median(e["tokens_per_s"] for e in entries),
            "row_steps_per_s": best["row_steps_per_s"],
            "tokens_per_cpu_s": max(e["tokens_per_cpu_s"] for e in entries),
            "tokens": best["tokens"],
            "seconds": best["seconds"],
            "capped_rows": best["capped_rows"],
            "rows": rows,
        }
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
            print(f"  rss {m:<11} {results['methods'][m]['peak_rss_mb']:7.0f} MB", flush=True)

    ratios = results.setdefault("ratios", {})
    tps = {m: results["methods"][m]["tokens_per_s"] for m in args.methods}
    for other in ("base", "sequential", "peft_mixed"):
        if "batched" in tps and other in tps:
            ratios[f"batched_over_{other}"] = tps["batched"] / tps[other]
    if not args.no_rss and {"batched", "base"} <= set(args.methods):
        ratios["rss_batched_over_base"] = (
            results["methods"]["batched"]["peak_rss_mb"] / results["methods"]["base"]["peak_rss_mb"]
        )
    last = {m: runs[m][-1]["completions"] for m in args.methods}
    for other in ("sequential", "peft_mixed"):
        if "batched" in last and other in last:
            flat = [[text for row in last[k] for text in row] for k in ("batched", other)]
            pairs = zip(*flat, strict=True)
            same = sum(x == y for x, y in pairs)
            results[f"rows_matching_{other}"] = f"{same}/{rows}"
            if other == "sequential":
                results["outputs_match"] = same == rows
    print_table(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def print_table(results: dict[str, Any]) -> None:
    columns = (
        ("tokens/s", 10),
        ("median", 10),
        ("row-steps/s", 13),
        ("tokens", 8),
        ("capped", 9),
        ("peak RSS MB", 12),
    )
    print(f"{'method':<12}" + "".join(f"{name:>{width}}" for name, width in columns))
    for m, r in results["methods"].items():
        rss = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "-"
        print(
            f"{m:<12}{r['tokens_per_s']:>10.1f}{r['tokens_per_s_median']:>10.1f}{r['row_steps_per_s']:>13.1f}"
            f"{r['tokens']:>8}{r['capped_rows']:>5}/{r['rows']:<3}{rss:>12}"
        )
    for k, v in results.get("ratios", {}).items():
        print(f"{k} = {v:.2f}")
    for k in ("outputs_match", "rows_matching_sequential", "rows_matching_peft_mixed"):
        if k in results:
            print(f"{k} = {results[k]}")


if __name__ == "__main__":
    main()
