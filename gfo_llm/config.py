"""Settings shared by every LLM problem (`--set problem.KEY=VALUE`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from gfo.config import check_spread
from gfo.errors import ConfigError

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

# The choice fields: `Literal` types, so that mypy checks the code's values and `gfo.config.convert`
# the user's (one line naming the choices); the tuples are the same choices for the checks below.
Dtype = Literal["auto", "bf16", "fp32", "fp16"]
SpaceKind = Literal["svd", "lora"]  # LoRA search spaces (gfo_llm.spaces), not tuning ranges
Init = Literal["pissa", "random"]
Backend = Literal["transformers", "vllm"]
EngineKind = Literal["continuous", "hf"]
Quantization = Literal["bitsandbytes", "fp8", "awq", "gptq"]
Fitness = Literal["reward", "likelihood"]
DTYPES: tuple[str, ...] = get_args(Dtype)
SPACE_KINDS: tuple[str, ...] = get_args(SpaceKind)
INITS: tuple[str, ...] = get_args(Init)
BACKENDS: tuple[str, ...] = get_args(Backend)
ENGINES: tuple[str, ...] = get_args(EngineKind)
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
FITNESSES: tuple[str, ...] = get_args(Fitness)


@dataclass(frozen=True)
class LLMConfig:
    """What model to adapt, which LoRA space to search, and how to score candidates."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "hub id, local model directory or .gguf file; default: bundled SmolLM2-135M-Instruct"
        },
    )
    device: str = field(
        default="auto",
        metadata={
            "help": "auto (the first CUDA device where torch sees one, else the CPU), cpu, cuda or cuda:N: "
            "where the model, the population engine and its KV cache run"
        },
    )
    dtype: Dtype = field(
        default="auto",
        metadata={"help": "auto (bf16 on GPUs and CPUs with native bf16, else fp32), bf16, fp32 or fp16"},
    )
    space: SpaceKind = field(
        default="svd", metadata={"help": "svd: singular values of the LoRA factors (ESSA); lora: full A, B"}
    )
    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float = field(
        default=1.0, metadata={"help": "fraction of each factor's singular values searched (svd)"}
    )
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj"), metadata={"help": "linear layers that get a LoRA"}
    )
    init_adapter: str | None = field(
        default=None, metadata={"help": "warm-start PEFT adapter directory (e.g. from `gfo sft`)"}
    )
    init: Init = field(
        default="pissa",
        metadata={
            "help": "no-warm-start init: pissa (principal components of W) or random (random A, B = 0)"
        },
    )
    stdev: float = field(
        default=0.25,
        metadata={
            "help": "initial search spread, in singular-value units for svd (algo.stdev_init wins); "
            "0.25 makes most greedy completions of the bundled model change (docs/lab/learning.md)"
        },
    )
    batch_size: int = field(
        default=8, metadata={"help": "training prompts per generation (same for all candidates)"}
    )
    fitness: Fitness = field(
        default="reward",
        metadata={
            "help": "reward: mean task reward of the completions (greedy unless temperature > 0); "
            "likelihood: mean log-probability per token of the task's reference completions (teacher "
            "forcing, no generation: ES on the SFT loss). Held-out evaluation scores rewards either way"
        },
    )
    kl_coef: float = field(
        default=0.0,
        metadata={
            "help": "beta: fitness = mean reward - beta x the candidate's KL to the search's start (mean per "
            "answer token, exact over the vocabulary, teacher-forced on its own answers; GRPO's beta). "
            "0: no KL term and no extra passes"
        },
    )
    temperature: float = field(
        default=0.0,
        metadata={
            "help": "sampling temperature of the search's completions; 0: greedy. > 0: each row draws from a "
            "generator seeded by (run seed, generation, prompt, sample), the same for every candidate "
            "(common random numbers). Held-out evaluation stays greedy"
        },
    )
    top_p: float = field(
        default=1.0,
        metadata={
            "help": "nucleus sampling: the smallest set of most likely tokens holding this much probability "
            "(1.0: all tokens); needs temperature > 0"
        },
    )
    samples_per_prompt: int = field(
        default=1,
        metadata={
            "help": "k: completions per candidate and prompt (needs temperature > 0); the fitness is the "
            "mean reward over all k x batch_size, at k times the generation cost"
        },
    )
    max_new_tokens: int = field(default=96, metadata={"help": "generation cap per completion"})
    eval_every: int = field(
        default=5, metadata={"help": "held-out evaluation every k generations (0: never)"}
    )
    eval_limit: int = field(default=64, metadata={"help": "held-out items evaluated"})
    eval_split: str = field(default="test", metadata={"help": "split used for held-out evaluation"})
    row_budget: int | None = field(
        default=None,
        metadata={
            "help": "max rows (candidates x prompts) in flight at once (hf engine: per generate call); "
            "none: 64 on the CPU, on CUDA as many as the free memory holds (KV cache per row)"
        },
    )
    engine: EngineKind = field(
        default="continuous",
        metadata={
            "help": "transformers backend: continuous (finished rows leave the batch, free slots are "
            "refilled) or hf (one model.generate call per chunk of row_budget rows; the reference)"
        },
    )
    system_prompt: str | None = field(default=None, metadata={"help": "system message before each prompt"})
    reward_timeout_s: float | None = field(
        default=60.0,
        metadata={
            "help": "seconds one reward call (a candidate's completions) may take; a call that raises, "
            "times out or returns no finite number per completion gives that candidate NaN (none: no limit)"
        },
    )
    backend: Backend = field(
        default="transformers", metadata={"help": "transformers (batched per-row LoRA) or vllm"}
    )
    quantization: Quantization | None = field(
        default=None, metadata={"help": "vllm backend: bitsandbytes, fp8, awq or gptq (vLLM's quantization=)"}
    )
    max_loras: int = field(
        default=0, metadata={"help": "vllm backend: adapters batched at once (0: all candidates of a call)"}
    )
    max_model_len: int | None = field(
        default=None, metadata={"help": "vllm backend: KV cache context length (None: model's)"}
    )
    gpu_memory_utilization: float = field(
        default=0.9, metadata={"help": "vllm backend: share of GPU memory vLLM may take"}
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "folder holding <task>/{train,test}.jsonl; default: $GFO_DATA_DIR or hub"},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "converted-model cache; default: $GFO_CACHE_DIR or ~/.cache/gfo"}
    )

    def __post_init__(self) -> None:
        _choice("dtype", self.dtype, DTYPES)
        _choice("space", self.space, SPACE_KINDS)
        _choice("init", self.init, INITS)
        _choice("backend", self.backend, BACKENDS)
        _choice("engine", self.engine, ENGINES)
        _choice("fitness", self.fitness, FITNESSES)
        if self.fitness == "likelihood" and self.backend != "transformers":
            raise ConfigError(
                "problem.fitness=likelihood needs problem.backend=transformers (vLLM scores no references); "
                "drop one of them"
            )
        if not 0.0 <= self.kl_coef < math.inf:
            raise ConfigError(
                f"problem.kl_coef must be a number >= 0; got {self.kl_coef}, use e.g. 0.05 (0: no KL term)"
            )
        if self.kl_coef > 0 and (self.fitness != "reward" or self.backend != "transformers"):
            raise ConfigError(
                "problem.kl_coef needs problem.fitness=reward and problem.backend=transformers (the KL is "
                "taken on the candidates' own answers, teacher-forced); drop kl_coef or change those"
            )
        _check_sampling(self)
        if self.quantization is not None:
            _choice("quantization", self.quantization, QUANTIZATIONS)
            if self.backend != "vllm":
                raise ConfigError(
                    f"problem.quantization={self.quantization} needs problem.backend=vllm; "
                    "add it or drop the quantization"
                )
        if self.max_loras < 0:
            raise ConfigError(f"problem.max_loras must be >= 0 (0: all candidates); got {self.max_loras}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(f"problem.max_model_len must be >= 1; got {self.max_model_len}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(
                "problem.gpu_memory_utilization must be in (0, 1]; "
                f"got {self.gpu_memory_utilization}, use e.g. 0.9"
            )
        if self.rank < 1:
            raise ConfigError(f"problem.rank must be >= 1; got {self.rank}, use e.g. 8")
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"problem.alpha must be in (0, 1]; got {self.alpha}, use 1.0 to search all")
        for name in ("batch_size", "max_new_tokens", "eval_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"problem.{name} must be >= 1; got {getattr(self, name)}")
        if self.row_budget is not None and self.row_budget < 1:
            raise ConfigError(
                f"problem.row_budget must be >= 1; got {self.row_budget}, or none (sized for the device)"
            )
        if not _DEVICE.fullmatch(self.device.strip().lower()):
            raise ConfigError(f"problem.device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        # one spelling from here on: code compares it with "auto" and "cpu"
        object.__setattr__(self, "device", self.device.strip().lower())
        if self.eval_every < 0:
            raise ConfigError(f"problem.eval_every must be >= 0 (0 disables); got {self.eval_every}")
        check_spread("problem.stdev", self.stdev)
        if self.reward_timeout_s is not None and not 0 < self.reward_timeout_s < math.inf:
            raise ConfigError(
                f"problem.reward_timeout_s must be a number of seconds > 0; got {self.reward_timeout_s}, "
                "use e.g. 60, or none for no limit"
            )
        if not self.target_modules:
            raise ConfigError("problem.target_modules is empty; use e.g. q_proj,v_proj")
        for name in ("model", "init_adapter", "data_dir", "cache_dir"):
            value = getattr(self, name)
            if value is not None and (not value.strip() or "\x00" in value):  # "": the current folder
                raise ConfigError(
                    f"problem.{name} must name a path or hub id; got {value!r}, or leave it out (the default)"
                )


def _check_sampling(c: LLMConfig) -> None:
    """temperature, top_p and samples_per_prompt: each in range, and none set where it does nothing."""
    if not 0.0 <= c.temperature < math.inf:
        raise ConfigError(
            f"problem.temperature must be a number >= 0; got {c.temperature}, use e.g. 0.8 (0: greedy)"
        )
    if not 0.0 < c.top_p <= 1.0:
        raise ConfigError(f"problem.top_p must be in (0, 1]; got {c.top_p}, use e.g. 0.95 (1.0: all tokens)")
    if c.samples_per_prompt < 1:
        raise ConfigError(
            f"problem.samples_per_prompt must be >= 1; got {c.samples_per_prompt}, use e.g. 4 (1: one each)"
        )
    if c.temperature == 0 and (c.top_p < 1.0 or c.samples_per_prompt > 1):
        name, value = ("top_p", c.top_p) if c.top_p < 1.0 else ("samples_per_prompt", c.samples_per_prompt)
        raise ConfigError(
            f"problem.{name}={value} needs sampling, but problem.temperature is 0 (greedy: every sample "
            "the same); set problem.temperature, e.g. 0.8, or drop it"
        )
    if c.temperature > 0 and c.fitness != "reward":
        raise ConfigError(
            f"problem.temperature={c.temperature} needs problem.fitness=reward (likelihood scores references "
            "and generates nothing); drop one of them"
        )


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"problem.{name} must be one of {', '.join(allowed)}; got {value!r}")
