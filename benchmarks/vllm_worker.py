"""vLLM's side of benchmarks/population_throughput.py, run by the interpreter of vLLM's own venv.

vLLM pins its own torch, so it cannot share gfo's environment: the benchmark starts this script
with `--vllm-python` and the two exchange JSON files. This file needs only vLLM and the standard
library (no gfo, no tokenizer): prompts arrive as token ids and completions leave as token ids;
the benchmark applies gfo's EOS and stop rule to them afterwards.

    PY vllm_worker.py --probe                   # prints {"vllm": VERSION} or {"error": WHY}; exit 0 / 3
    PY vllm_worker.py REQUEST.json RESPONSE.json

The request (`population_throughput.vllm_request` writes it):

    {"model": DIR, "dtype": "float32", "max_model_len": N, "seed": 0,
     "prompt_ids": [[int, ...], ...],           # B prompts, already chat-templated and encoded
     "candidates": P, "eos_ids": [int, ...], "max_tokens": T, "warmup_tokens": 4, "repeats": R,
     "methods": ["vllm_plain", "vllm_lora"],
     "adapters": [DIR, ...],                    # P PEFT adapter folders, candidate order
     "max_lora_rank": 16}

Rows are candidate-major, P x B: row r is prompt r % B, and for `vllm_lora` candidate r // B's
adapter. `vllm_plain` runs the same rows on the base model without LoRA. Each method gets an
engine of its own (LoRA support off for the plain one), one warm-up `generate`, then `repeats`
timed `generate` calls over all rows, the prefix cache reset before each. Every `vllm_lora` call,
the warm-up included, registers its adapters under fresh ids, so each loads its P adapters from
disk as a generation of an ES run does, and removes them afterwards. The response:

    {"vllm": VERSION,
     "methods": {NAME: {"engine_start_s": s, "seconds": [s, ...], "token_ids": [[int, ...], ...]}}}

`token_ids` are the rows of the last timed call, up to and including a stop token (vLLM stops at
`eos_ids` and at `max_tokens`; greedy, so every call gives the same rows).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

METHODS = ("vllm_plain", "vllm_lora")
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "dtype": str,
    "max_model_len": int,
    "seed": int,
    "prompt_ids": list,
    "candidates": int,
    "eos_ids": list,
    "max_tokens": int,
    "warmup_tokens": int,
    "repeats": int,
    "methods": list,
    "adapters": list,
    "max_lora_rank": int,
}


def check_request(request: dict[str, Any]) -> None:
    """Refuse a request the worker cannot run, naming the field (ValueError)."""
    for key, kind in REQUIRED.items():
        if not isinstance(request.get(key), kind):
            raise ValueError(f"request field {key!r} must be {kind}; got {request.get(key)!r}")
    unknown = sorted(set(request["methods"]) - set(METHODS))
    if unknown or not request["methods"]:
        raise ValueError(f"request methods must be a non-empty subset of {METHODS}; got {request['methods']}")
    prompts = request["prompt_ids"]
    if not prompts or not all(
        isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompts
    ):
        raise ValueError("request field 'prompt_ids' must be non-empty lists of token ids")
    if request["candidates"] < 1 or request["max_tokens"] < 1 or request["repeats"] < 1:
        raise ValueError("candidates, max_tokens and repeats must be >= 1")
    if "vllm_lora" in request["methods"] and len(request["adapters"]) != request["candidates"]:
        raise ValueError(
            f"vllm_lora needs one adapter folder per candidate: {request['candidates']} candidates, "
            f"{len(request['adapters'])} folders"
        )


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Every requested method, each on an engine of its own; see the module docstring."""
    import vllm

    check_request(request)
    response: dict[str, Any] = {"vllm": vllm.__version__, "methods": {}}
    for method in request["methods"]:
        response["methods"][method] = _method(request, method)
    return response


def _method(request: dict[str, Any], method: str) -> dict[str, Any]:
    from vllm import LLM

    lora = method == "vllm_lora"
    engine_args: dict[str, Any] = {
        "model": request["model"],
        "dtype": request["dtype"],
        "max_model_len": request["max_model_len"],
        "seed": request["seed"],
        "enable_prefix_caching": True,
        # The model's generation_config.json must not add sampling defaults to greedy requests.
        "generation_config": "vllm",
    }
    if lora:
        engine_args.update(
            enable_lora=True,
            max_loras=request["candidates"],
            max_cpu_loras=request["candidates"],
            max_lora_rank=request["max_lora_rank"],
        )
    started = time.perf_counter()
    llm = LLM(**engine_args)
    engine_start = time.perf_counter() - started
    _say(f"{method}: engine started in {engine_start:.1f} s")
    rows = request["candidates"] * len(request["prompt_ids"])
    try:
        _generate(llm, request, request["warmup_tokens"], lora, first_id=1)
        times: list[float] = []
        token_ids: list[list[int]] = []
        for r in range(request["repeats"]):
            # Fresh ids every call: vLLM caches adapters by id, and a new generation brings new ones.
            first_id = (r + 1) * request["candidates"] + 1
            seconds, token_ids = _generate(llm, request, request["max_tokens"], lora, first_id)
            times.append(seconds)
            _say(f"{method}: run {r + 1} {rows / seconds:.2f} completions/s ({seconds:.1f} s)")
    finally:
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
    return {"engine_start_s": engine_start, "seconds": times, "token_ids": token_ids}


def _generate(
    llm: Any, request: dict[str, Any], max_tokens: int, lora: bool, first_id: int
) -> tuple[float, list[list[int]]]:
    """One timed `generate` over all rows (candidate-major), the prefix cache reset first; with
    `lora`, candidate c's adapter under id `first_id + c`, removed afterwards."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    prompts, candidates = request["prompt_ids"], request["candidates"]
    params = SamplingParams(
        temperature=0.0, max_tokens=max_tokens, stop_token_ids=request["eos_ids"], detokenize=False
    )
    ids = range(first_id, first_id + candidates) if lora else range(0)
    folders = request["adapters"] if lora else []  # the plain engine has LoRA off: no adapters
    adapters = [LoRARequest(f"c{i}", i, path) for i, path in zip(ids, folders, strict=True)]
    requests = [a for a in adapters for _ in prompts] if lora else None
    rows = [TokensPrompt(prompt_token_ids=list(p)) for _ in range(candidates) for p in prompts]
    llm.reset_prefix_cache()
    start = time.perf_counter()
    outputs = llm.generate(rows, params, lora_request=requests, use_tqdm=False)
    seconds = time.perf_counter() - start
    for lora_id in ids:
        llm.llm_engine.remove_lora(lora_id)
    return seconds, [list(out.outputs[0].token_ids) for out in outputs]


def _say(line: str) -> None:
    print(f"vllm_worker: {line}", flush=True)


def main(argv: list[str]) -> int:
    try:
        import vllm
    except Exception as error:  # any failure to import (a missing CPU feature too) is why to skip
        why = f"cannot import vllm: {type(error).__name__}: {error}"
        if argv[:1] == ["--probe"]:
            print(json.dumps({"error": why}))
        else:
            print(why, file=sys.stderr)
        return 3
    if argv[:1] == ["--probe"]:
        print(json.dumps({"vllm": vllm.__version__}))
        return 0
    if len(argv) != 2:
        print("usage: vllm_worker.py --probe | REQUEST.json RESPONSE.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        request = json.load(f)
    response = run(request)
    with open(argv[1], "w") as f:
        json.dump(response, f)
    return 0


if __name__ == "__main__":  # vLLM's engine process re-imports the main module
    sys.exit(main(sys.argv[1:]))
