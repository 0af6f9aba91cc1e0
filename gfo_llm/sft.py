"""Supervised warm start of the LoRA adapter (`gfo sft`), as ESSA does before searching.

ESSA (arXiv 2507.04453, Sec. 3.1 and 4) fine-tunes the LoRA once on the task's reference
solutions (GSM8K: 1 epoch, batch 16, lr 1e-4) and then searches the singular values of that
adapter; without the warm start ES still works, but ends lower. Training uses TRL's `SFTTrainer`
with a PEFT `LoraConfig` in float32, the loss on the completion only. Prompts are the exact text
the search and `gfo eval` give the model (`LLMProblem.prompts`: task prompt, system message, chat
template), and each completion is the task's `reference(example)` followed by the EOS token, so
the adapter learns to stop where generation stops.

The result, `OUT/adapter`, is a standard PEFT directory: `gfo run --set problem.init_adapter=OUT/adapter`
starts the search from it, `gfo eval --adapter OUT/adapter` measures it.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from gfo import strictjson
from gfo.checkpoint import atomic_write
from gfo.errors import ConfigError, GfoError
from gfo.registry import PROBLEMS
from gfo_llm.config import LLMConfig
from gfo_llm.task import Example, Task, reference_completion

ADAPTER = "adapter"
RESULT = "sft.json"

#: progress(step, total_steps, loss of the step or None)
Progress = Callable[[int, int, float | None], None]


@dataclass(frozen=True)
class SFTSettings:
    """Training settings of `gfo sft`; defaults are ESSA's GSM8K warm start."""

    epochs: float = field(default=1.0, metadata={"help": "passes over the (limited) training split"})
    batch_size: int = field(default=16, metadata={"help": "examples per optimizer step"})
    micro_batch_size: int = field(
        default=4,
        metadata={
            "help": "examples per forward and backward pass; a step accumulates batch_size / micro_batch_size"
            " of them (the same update; 16 GSM8K items in one pass peaked at 17.6 GB, in passes of 4 at 6.0)"
        },
    )
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (linear decay to 0)"})
    limit: int | None = field(default=None, metadata={"help": "train on the first N training examples"})
    seed: int = field(default=0, metadata={"help": "seeds the LoRA init and the data order"})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha; default 2 x rank"})
    max_length: int = field(default=1024, metadata={"help": "longer prompt + completion are cut"})

    def __post_init__(self) -> None:
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ConfigError(f"--epochs must be > 0; got {self.epochs}, use e.g. 1")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1; got {self.batch_size}, use e.g. 16")
        if self.micro_batch_size < 1:
            raise ConfigError(f"--micro-batch-size must be >= 1; got {self.micro_batch_size}, use e.g. 4")
        if self.batch_size % self.micro:
            raise ConfigError(
                f"--batch-size must be a multiple of --micro-batch-size (a step is whole micro-batches);"
                f" got {self.batch_size} and {self.micro_batch_size}, use --micro-batch-size 1 or a divisor"
                f" of {self.batch_size}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be > 0; got {self.lr}, use e.g. 1e-4")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(
                f"--limit must be >= 1; got {self.limit}, or leave it out to use the whole split"
            )
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ConfigError(f"lora_alpha must be > 0; got {self.lora_alpha}")
        if self.max_length < 16:
            raise ConfigError(f"max_length must be >= 16; got {self.max_length}")

    @property
    def micro(self) -> int:
        """The examples of one forward pass: the micro-batch, or the whole step if that is smaller."""
        return min(self.micro_batch_size, self.batch_size)


def task_for(problem_name: str, config: LLMConfig) -> Task:
    """The reward task behind a registered LLM problem (no model is loaded)."""
    from gfo_llm.problem import LLMProblem

    cls = PROBLEMS.get(problem_name)
    if not (isinstance(cls, type) and issubclass(cls, LLMProblem)):
        raise GfoError(f"problem {problem_name!r} is not an LLM task; gfo sft takes e.g. gsm8k or arithmetic")
    return cls.task_class(config)


def training_pairs(
    task: Task, tokenizer: Any, config: LLMConfig, limit: int | None = None
) -> tuple[list[str], list[str]]:
    """(prompt, completion) texts of the first `limit` training examples.

    Prompts are built exactly as the search builds them; completions are `task.reference(example)`
    plus the EOS token.
    """
    from gfo_llm.model import chat_prompt

    examples: Sequence[Example] = list(task.examples("train"))[:limit]
    if not examples:
        raise GfoError(f"{task.name}: the train split is empty; nothing to fine-tune on")
    prompts: list[str] = []
    completions: list[str] = []
    for example in examples:
        completions.append(
            reference_completion(
                task,
                example,
                tokenizer.eos_token,
                "gfo sft needs them: implement reference() or start the search without a warm start",
            )
        )
        prompts.append(chat_prompt(tokenizer, task.prompt(example), config.system_prompt))
    return prompts, completions


def sft(
    problem_name: str,
    config: LLMConfig,
    settings: SFTSettings,
    out: Path,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fine-tune a LoRA (rank `config.rank` on `config.target_modules`) and save it to `out/adapter`.

    Returns the summary also written to `out/sft.json`.
    """
    import torch
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from gfo_llm.model import load_model, model_id, resolve_device

    task = task_for(problem_name, config)
    device = resolve_device(config.device)
    started = time.perf_counter()
    model, tokenizer = load_model(config.model, "fp32", config.cache_dir, str(device))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the Trainer trains on the current CUDA device
    base_id = model_id(model)
    prompts, completions = training_pairs(task, tokenizer, config, settings.limit)
    import datasets

    datasets.disable_progress_bars()  # TRL's dataset preparation bars; `progress` is the display
    dataset = datasets.Dataset.from_dict({"prompt": prompts, "completion": completions})
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=settings.lora_alpha or 2 * config.rank,
        target_modules=list(config.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    losses: list[dict[str, float]] = []

    class _Report(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                losses.append({"step": state.global_step, "loss": float(logs["loss"])})
                if progress is not None:
                    progress(state.global_step, state.max_steps, float(logs["loss"]))

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GfoError(f"cannot create {out}: {exc.strerror}; pick another --out") from None
    with tempfile.TemporaryDirectory(prefix=".sft-", dir=out) as scratch:
        args = SFTConfig(
            output_dir=scratch,
            num_train_epochs=settings.epochs,
            # Transformers normalizes the accumulated loss by the step's completion tokens
            # (`num_items_in_batch`), so micro-batches give the update of the whole batch.
            per_device_train_batch_size=settings.micro,
            gradient_accumulation_steps=settings.batch_size // settings.micro,
            learning_rate=settings.lr,
            lr_scheduler_type="linear",
            optim="adamw_torch",
            seed=settings.seed,
            bf16=False,  # float32 training: bf16 matmuls are slow on CPU and lossy for small updates
            fp16=False,
            gradient_checkpointing=False,  # a LoRA on a small model fits; recomputation only costs time
            completion_only_loss=True,
            max_length=settings.max_length,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_pin_memory=False,
            use_cpu=device.type == "cpu",  # else the Trainer would move the model to a GPU it sees
        )
        set_seed(settings.seed)  # SFTTrainer initializes the LoRA before Trainer seeds anything
        trainer = SFTTrainer(
            model=cast(Any, model),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[_Report()],
        )
        trainer.remove_callback(PrinterCallback)  # with tqdm off it prints every log dict; `progress` reports
        # LLMProblem.prepare switches autograd off for its process; training needs it back.
        with torch.enable_grad():
            result = trainer.train()
    adapter = out / ADAPTER
    peft_model: Any = trainer.model
    peft_model.save_pretrained(str(adapter), safe_serialization=True)
    summary: dict[str, Any] = {
        "problem": problem_name,
        "task": task.name,
        "model": base_id,
        "adapter": str(adapter),
        "rank": config.rank,
        "lora_alpha": lora.lora_alpha,
        "target_modules": list(config.target_modules),
        "examples": len(prompts),
        "steps": int(result.global_step),
        "train_loss": float(result.training_loss),
        "first_loss": losses[0]["loss"] if losses else None,
        "last_loss": losses[-1]["loss"] if losses else None,
        "losses": losses,
        "settings": asdict(settings),
        "system_prompt": config.system_prompt,
        "device": str(device),
        "wall_s": round(time.perf_counter() - started, 3),
    }
    atomic_write(out / RESULT, (strictjson.dumps(summary, indent=2) + "\n").encode())
    return summary
