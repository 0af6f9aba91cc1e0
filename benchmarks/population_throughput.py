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
               patterns: PEFT has none);
  vllm_plain   vLLM, the base model without LoRA, one `generate` over all P x B rows;
  vllm_lora    vLLM with `enable_lora` and max_loras = P, one `generate` over all rows, each row with
               its candidate's LoRARequest (the candidates exported as PEFT adapters by gfo's own
               `save_peft_adapter`).
The two vLLM methods run in vLLM's own venv (`--vllm-python PATH`: vLLM pins its own torch) through
benchmarks/vllm_worker.py, which gets the prompts' token ids, gfo's EOS ids, the cap and the
adapter folders and returns token ids and timings; gfo's EOS and stop rule is applied to its rows
afterwards. Without `--vllm-python`, or with an interpreter that cannot import vllm, they are
skipped with a note (and `"skipped": WHY` in the JSON). `--vllm-python` alone adds them to the
default methods.
`ceiling_tokens_per_s` is the model's forward tokens/s over one large prefill batch (the best of a
few batch shapes): the compute a forward pass reaches on this machine.

Per method: completions/s, generated tokens/s (up to and including EOS), forward tokens/s (prompt
+ generated tokens, each counted once; padding and recomputation excluded), best of `--repeats`
runs interleaved in one process after a warm-up; peak RSS in a fresh subprocess per method (the
high-water mark, reset after loading and setup, so it includes weights, KV cache and activations;
not measured for the vLLM methods). vLLM's timings cover its `generate` calls (adapter loading
included, engine start reported apart), the same P x B rows, best of `--repeats` after a warm-up.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

METHODS = ("engine", "hf_generate", "base", "peft_mixed")
VLLM_METHODS = ("vllm_plain", "vllm_lora")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
WORKER = Path(__file__).resolve().with_name("vllm_worker.py")
#: A run's completions, generated token counts and token ids ([candidate][prompt]; ids None where
#: a method does not return them).
Run = Callable[[int], tuple[list[list[str]], list[list[int]], list[list[list[int]]] | None]]


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
    p.add_argument(
        "--methods",
        default=None,
        help=f"subset of {','.join(METHODS + VLLM_METHODS)} (default: {','.join(METHODS)}, "
        "and the vLLM ones with --vllm-python)",
    )
    p.add_argument(
        "--vllm-python",
        default=None,
        help="python of a venv with vLLM (docs/performance.md): runs vllm_plain and vllm_lora",
    )
    p.add_argument("--model", default=None, help="model (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-rss", action="store_true", help="skip the per-method memory subprocesses")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.methods is None:
        args.methods = ",".join(METHODS + (VLLM_METHODS if args.vllm_python else ()))
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS + VLLM_METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS + VLLM_METHODS)}")
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
        self.prompt_ids: list[list[int]] = self.tokenizer(self.prompts, add_special_tokens=False)["input_ids"]
        self.prompt_tokens = [len(ids) for ids in self.prompt_ids]
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
            return result.completions, result.num_tokens, result.token_ids

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
            return _grid(texts, b), _grid([len(t) for t in out], b), _grid(out, b)

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
            return _grid(texts, b), _grid(counts, b), None

        return run

    def vllm_request(self, methods: list[str], folder: Path) -> dict[str, Any]:
        """The worker's request (benchmarks/vllm_worker.py): this bench's prompts as token ids, gfo's
        EOS ids and cap, and for `vllm_lora` each candidate exported into `folder` as a PEFT adapter
        against the original weights (rank 2r after the PiSSA start), as the vLLM backend does."""
        from gfo_llm.adapters import save_peft_adapter
        from gfo_llm.batched import eos_ids
        from gfo_llm.model import model_id
        from gfo_llm.vllm_backend import VLLM_DTYPES, rank_slot

        adapters: list[str] = []
        if "vllm_lora" in methods:
            for i, vector in enumerate(self.population):
                path = save_peft_adapter(
                    self.space.to_lora(vector),
                    folder / f"c{i}",
                    base_model_id=model_id(self.original),
                    target_modules=TARGETS,
                    residual=self.lora,
                )
                adapters.append(str(path))
        a, _ = next(iter(self.lora.values()))
        return {
            "model": model_id(self.original),
            "dtype": VLLM_DTYPES[self.args.dtype],
            "max_model_len": max(self.prompt_tokens) + self.args.max_new_tokens,
            "seed": 0,
            "prompt_ids": [list(ids) for ids in self.prompt_ids],
            "candidates": self.args.popsize,
            "eos_ids": eos_ids(self.original, self.tokenizer),
            "max_tokens": self.args.max_new_tokens,
            "warmup_tokens": 4,
            "repeats": self.args.repeats,
            "methods": [m for m in VLLM_METHODS if m in methods],
            "adapters": adapters,
            "max_lora_rank": rank_slot(2 * int(a.shape[0])),  # the candidate's r plus PiSSA's r
        }

    def vllm_entry(self, method: dict[str, Any]) -> dict[str, Any]:
        """One method of the worker's response as a result entry: gfo's EOS and stop rule applied to
        vLLM's rows (its `stop` takes strings, not the task's regular expressions), best run."""
        from gfo_llm.batched import eos_ids
        from gfo_llm.decode import stop_matcher
        from gfo_llm.vllm_backend import result_from_token_rows

        rows = method["token_ids"]
        b = len(self.prompts)
        _, counts, _ = result_from_token_rows(
            self.tokenizer,
            rows,
            len(rows) // b,
            b,
            eos_ids(self.original, self.tokenizer),
            stop_matcher(self.task.stop, self.tokenizer),
        )
        flat = [c for row in counts for c in row]
        entry = measure(self, min(method["seconds"]), counts, self.args.max_new_tokens)
        entry["engine_start_s"] = method["engine_start_s"]
        entry["generated_tokens"] = sum(map(len, rows))  # before gfo's stop rule cut them
        entry["token_ids"] = _grid([row[:c] for row, c in zip(rows, flat, strict=True)], b)
        return entry

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
    texts, counts, ids = run(tokens)
    seconds = time.perf_counter() - start
    return {**measure(bench, seconds, counts, tokens), "completions": texts, "token_ids": ids}


def measure(bench: Bench, seconds: float, counts: list[list[int]], cap: int) -> dict[str, Any]:
    """Rates of one call that generated `counts` tokens per row ([candidate][prompt]) in `seconds`."""
    generated = sum(map(sum, counts))
    rows = sum(map(len, counts))
    prompt = sum(bench.prompt_tokens) * len(counts)
    return {
        "seconds": seconds,
        "completions_per_s": rows / seconds,
        "tokens_per_s": generated / seconds,
        "forward_tokens_per_s": (prompt + generated) / seconds,
        "tokens": generated,
        "capped_rows": sum(c >= cap for row in counts for c in row),
        "rows": rows,
    }


def rows_matching(a: list[list[list[int]]], b: list[list[list[int]]]) -> int:
    """Rows ([candidate][prompt] token ids) whose tokens are identical in `a` and `b`."""
    return sum(x == y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def compare_vllm(methods: dict[str, dict[str, Any]], ids: dict[str, Any]) -> dict[str, Any]:
    """gfo's engine against vLLM, with the file's ratio definitions: over `vllm_plain` in generated
    tokens/s (as `engine_over_base`: the candidates write other text than the base model), over
    `vllm_lora` in completions/s (as `engine_over_hf_generate`: the same candidates and prompts);
    rows token-identical to gfo's (engine vs vllm_lora, base vs vllm_plain). `ids` holds each
    method's token ids [candidate][prompt], None where it has none or was skipped."""
    out: dict[str, Any] = {}
    if ids.get("vllm_plain") is not None:
        if "engine" in methods:
            out["engine_over_vllm_plain"] = (
                methods["engine"]["tokens_per_s"] / methods["vllm_plain"]["tokens_per_s"]
            )
        if ids.get("base") is not None:
            out["rows_matching_vllm_plain"] = (
                f"{rows_matching(ids['base'], ids['vllm_plain'])}/{methods['base']['rows']}"
            )
    if ids.get("vllm_lora") is not None and ids.get("engine") is not None:
        out["engine_over_vllm_lora"] = (
            methods["engine"]["completions_per_s"] / methods["vllm_lora"]["completions_per_s"]
        )
        same = rows_matching(ids["engine"], ids["vllm_lora"])
        out["rows_matching_vllm_lora"] = f"{same}/{methods['engine']['rows']}"
    return out


def probe_vllm(python: str | None) -> tuple[str | None, str | None]:
    """(vLLM's version, None), or (None, why the vLLM methods are skipped)."""
    if not python:
        return None, "no --vllm-python given (vLLM needs a venv of its own: docs/performance.md)"
    try:
        done = subprocess.run(
            [python, str(WORKER), "--probe"], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"--vllm-python {python} did not run: {error}"
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        answer = {}
    if done.returncode == 0 and "vllm" in answer:
        return str(answer["vllm"]), None
    why = answer.get("error") or _last_line(done.stderr) or f"exit code {done.returncode}"
    return None, f"{python} cannot run vLLM: {why}"


def run_vllm(bench: Bench, python: str, methods: list[str], log: Path | None) -> dict[str, dict[str, Any]]:
    """The vLLM methods through the worker in vLLM's venv; entries as `timed` makes them, or
    {"skipped": why} each when the worker fails (its output's last lines are printed)."""
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # adapters in RAM, as the backend's
    folder = Path(tempfile.mkdtemp(prefix="gfo-bench-vllm-", dir=shm))
    try:
        request = bench.vllm_request(methods, folder / "adapters")
        (folder / "request.json").write_text(json.dumps(request))
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; on a CPU vLLM sizes its KV cache by this
        tail: deque[str] = deque(maxlen=20)
        with open(log or folder / "worker.log", "w") as out:
            worker = subprocess.Popen(
                [python, str(WORKER), str(folder / "request.json"), str(folder / "response.json")],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            for line in worker.stdout or ():
                out.write(line)
                tail.append(line.rstrip())
                if line.startswith("vllm_worker:"):
                    print("  " + line.rstrip().removeprefix("vllm_worker: "), flush=True)
            code = worker.wait()
        if code != 0:
            print(f"  the vLLM worker failed (exit {code}); its last lines:", *tail, sep="\n    ", flush=True)
            why = f"the vLLM worker failed (exit {code}): {_error_line(list(tail))}"
            return {m: {"skipped": why} for m in request["methods"]}
        response = json.loads((folder / "response.json").read_text())
        entries = {m: bench.vllm_entry(e) for m, e in response["methods"].items()}
        for entry in entries.values():
            entry["vllm"] = response["vllm"]
        return entries
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _error_line(lines: list[str]) -> str:
    """The exception a traceback ends with (warnings printed at exit may follow it), else the last line."""
    for line in reversed(lines):
        if re.match(r"[\w.]+(Error|Exception|Interrupt)\b", line.strip()):
            return line.strip()
    return _last_line("\n".join(lines))


def _last_line(text: str) -> str:
    return next((line for line in reversed(text.strip().splitlines()) if line.strip()), "")


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
    wanted_vllm = [m for m in args.methods if m in VLLM_METHODS]
    vllm_version, vllm_skipped = probe_vllm(args.vllm_python) if wanted_vllm else (None, None)
    if vllm_skipped:
        print(f"  {', '.join(wanted_vllm)} skipped: {vllm_skipped}", flush=True)
    elif wanted_vllm:
        print(f"  {', '.join(wanted_vllm)}: vLLM {vllm_version} through {args.vllm_python}", flush=True)
    bench = Bench(args)
    gfo_methods = [m for m in args.methods if m in METHODS]
    runners = {m: bench.setup(m) for m in gfo_methods}
    for run in runners.values():
        run(4)  # warm-up: first-call allocations and kernel selection
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in gfo_methods}
    for r in range(args.repeats):
        for m, run in runners.items():
            runs[m].append(timed(bench, run, args.max_new_tokens))
            e = runs[m][-1]
            print(
                f"  run {r + 1} {m:<12} {e['completions_per_s']:6.2f} completions/s "
                f"{e['tokens_per_s']:7.1f} tokens/s",
                flush=True,
            )
    vllm: dict[str, dict[str, Any]] = {m: {"skipped": vllm_skipped} for m in wanted_vllm if vllm_skipped}
    if wanted_vllm and not vllm_skipped:
        log = Path(args.json).with_suffix(".vllm.log") if args.json else None
        vllm = run_vllm(bench, args.vllm_python, wanted_vllm, log)
    ceiling = bench.ceiling()
    results: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "rss_child"},
        "cpu": cpu_model(),
        "ceiling_tokens_per_s": ceiling["tokens_per_s"],
        "ceiling_shape": ceiling["shape"],
        "methods": {},
    }
    ids: dict[str, Any] = {}
    for m, entries in runs.items():
        best = max(entries, key=lambda e: e["completions_per_s"])
        results["methods"][m] = {k: v for k, v in best.items() if k not in ("completions", "token_ids")}
        ids[m] = entries[-1]["token_ids"]
    for m, entry in vllm.items():
        results["methods"][m] = {k: v for k, v in entry.items() if k != "token_ids"}
        ids[m] = entry.get("token_ids")
    if not args.no_rss:
        for m in gfo_methods:
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
    results.update(compare_vllm(methods, ids))
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
        if "skipped" in r:
            print(f"{m:<13}skipped: {r['skipped']}")
            continue
        rss = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "-"
        print(
            f"{m:<13}{r['completions_per_s']:>9.2f}{r['tokens_per_s']:>10.1f}{r['forward_tokens_per_s']:>11.1f}"
            f"{r['tokens']:>8}{r['capped_rows']:>6}/{r['rows']:<4}{rss:>8}"
        )
    print(
        f"ceiling_tokens_per_s = {results['ceiling_tokens_per_s']:.1f} (prefill {results['ceiling_shape']})"
    )
    for k in (
        "engine_over_hf_generate",
        "engine_over_base",
        "engine_over_vllm_plain",
        "engine_over_vllm_lora",
        "ceiling_fraction",
        "rss_engine_over_base",
    ):
        if k in results:
            print(f"{k} = {results[k]:.2f}")
    for m, r in results["methods"].items():
        if "engine_start_s" in r:
            print(f"{m}: vLLM {r['vllm']}, engine start {r['engine_start_s']:.1f} s (not in its rates)")
    for k in (
        "outputs_match",
        "rows_matching_hf_generate",
        "rows_matching_vllm_lora",
        "rows_matching_vllm_plain",
    ):
        if k in results:
            print(f"{k} = {results[k]}")


if __name__ == "__main__":
    main()
