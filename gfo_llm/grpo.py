"""GRPO baseline on the same model, LoRA shape, task, prompts and reward as `gfo run`, for a budget
of generated completions; CPU only.

What is shared with the ES side (`gfo run --algo pgpe --problem arithmetic`):
- model: the bundled SmolLM2-135M-Instruct, through `gfo_llm.model.load_model`;
- adapter: a PEFT LoRA of rank `problem.rank` on `problem.target_modules` (scale 1: W + BA, as in ESSA);
- prompts: `task.prompt(example)` in the chat template (`gfo_llm.model.chat_prompt`), same system prompt;
- reward: `task.reward(completions, examples)`, the very function the search maximizes;
- held-out accuracy: `gfo_llm.evaluate.evaluate` (the path `gfo eval` and the search's held-out
  evaluation use: greedy, `problem.max_new_tokens`, the first `problem.eval_limit` items of
  `problem.eval_split`, `problem.dtype`), before training and with the trained adapter.

What GRPO needs that ES does not: sampling (temperature), backprop through the LoRA (fp32 here),
an optimizer. TRL's `GRPOTrainer` does all of it; this script only wires it up and counts.

    python -m gfo_llm.grpo --completions 256 --out runs/grpo
    python -m gfo_llm.grpo --completions 512 --set problem.level=1 --lr 5e-5

(`gfo learn --method grpo` runs it as its search step; benchmarks/grpo_baseline.py is the same.)

Writes OUT/result.json (and OUT/adapter/, OUT/eval-before/, OUT/eval-after/) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

from gfo.errors import GfoError
from gfo_llm.extras import require


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--problem", default="arithmetic", help="an LLM task problem (default arithmetic)")
    p.add_argument("--completions", type=int, default=256, help="budget: completions generated in training")
    p.add_argument("--num-generations", type=int, default=8, help="completions per prompt (GRPO group size)")
    p.add_argument("--prompts-per-step", type=int, default=4, help="prompts per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (AdamW on the LoRA)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature in training")
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient (0: no reference model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--skip-before", action="store_true", help="skip the held-out evaluation before training")
    p.add_argument("--out", type=Path, default=Path("runs/grpo-baseline"))
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="problem.KEY=VALUE as in gfo run (rank, target_modules, max_new_tokens, eval_limit, level)",
    )
    args = p.parse_args(argv)
    if args.completions < 1 or args.num_generations < 2 or args.prompts_per_step < 1:
        p.error("--completions >= 1, --num-generations >= 2 and --prompts-per-step >= 1 are required")
    return args


def problem_config(name: str, overrides: list[str]) -> Any:
    """The problem's settings from `--set problem.KEY=VALUE`, validated as `gfo run` validates them."""
    from gfo import config as cfg
    from gfo.errors import ConfigError
    from gfo.registry import PROBLEMS

    parsed = cfg.parse_set(overrides)
    if parsed["algo"] or parsed["run"]:
        raise ConfigError("the GRPO baseline takes --set problem.KEY=VALUE only")
    return cfg.build(PROBLEMS.get(name).Config, parsed["problem"], "problem")


class CountingReward:
    """The task's reward as a TRL reward function, counting completions and their tokens."""

    def __init__(self, task: Any) -> None:
        self.task = task
        self.completions = 0
        self.tokens = 0
        self.__name__ = f"{task.name}_reward"  # TRL logs rewards under the function's name

    def __call__(
        self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **kw: Any
    ) -> list[float | None]:
        # TRL passes dataset columns back as keyword arguments. The example travels as one JSON
        # string: Arrow would unify nested dicts across rows (instruct's per-instruction kwargs
        # would each gain every other instruction's keys as None).
        examples = [json.loads(text) for text in kw["example_json"]]
        self.completions += len(completions)
        self.tokens += sum(len(ids) for ids in completion_ids)
        return list(self.task.reward(completions, examples))


def dataset_rows(examples: list[Any], prompts: list[str]) -> list[dict[str, str]]:
    """GRPO's training rows: the prompt and the example, as one JSON string (see CountingReward)."""
    return [{"example_json": json.dumps(ex), "prompt": p} for ex, p in zip(examples, prompts, strict=False)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    require("grpo", "the GRPO baseline")  # TRL's GRPOTrainer
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from trl import GRPOConfig, GRPOTrainer

    from gfo.registry import PROBLEMS
    from gfo_llm.evaluate import evaluate
    from gfo_llm.model import chat_prompt, load_model

    started = time.perf_counter()
    config = problem_config(args.problem, args.overrides)
    task_class = getattr(PROBLEMS.get(args.problem), "task_class", None)
    if task_class is None:
        raise GfoError(f"problem {args.problem!r} has no reward task; use an LLM task such as arithmetic")
    task = task_class(config)
    args.out.mkdir(parents=True, exist_ok=True)

    # The search's held-out set: the first eval_limit items of eval_split (evaluate's default is all).
    heldout = {"split": config.eval_split, "limit": config.eval_limit}
    before = None
    if not args.skip_before:
        before = evaluate(args.problem, config, adapter=None, **heldout, out=args.out / "eval-before")

    torch.set_grad_enabled(True)  # gfo's evaluation turns gradients off process-wide; GRPO needs them
    model, tokenizer = load_model(config.model, dtype="fp32", cache_dir=config.cache_dir)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.rank,  # scale 1: W + B A, the parameterization ES searches
        lora_dropout=0.0,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    if config.init_adapter:
        from peft import PeftModel

        # The same start as the ES side: continue training the warm-start adapter (e.g. `gfo sft`).
        model = PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
    else:
        model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    per_step = args.num_generations * args.prompts_per_step
    steps = math.ceil(args.completions / per_step)
    train = list(task.examples("train"))
    prompts = [chat_prompt(tokenizer, task.prompt(ex), config.system_prompt) for ex in train]
    rows = dataset_rows(train[: steps * args.prompts_per_step], prompts)
    reward = CountingReward(task)
    grpo = GRPOConfig(
        output_dir=str(args.out / "trainer"),
        use_cpu=True,
        seed=args.seed,
        learning_rate=args.lr,
        max_steps=steps,
        per_device_train_batch_size=args.num_generations,
        gradient_accumulation_steps=args.prompts_per_step,  # one optimizer step per generation batch
        num_generations=args.num_generations,
        max_completion_length=config.max_new_tokens,
        temperature=args.temperature,
        beta=args.beta,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=True,
        bf16=False,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=grpo,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    train_started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - train_started
    adapter_dir = args.out / "adapter"
    model.save_pretrained(str(adapter_dir))  # the PEFT model TRL trained in place
    after = evaluate(args.problem, config, adapter=adapter_dir, **heldout, out=args.out / "eval-after")

    curve = [
        {"step": h["step"], "reward": h.get(f"rewards/{reward.__name__}/mean", h.get("reward"))}
        for h in trainer.state.log_history
        if "step" in h and ("reward" in h or f"rewards/{reward.__name__}/mean" in h)
    ]
    result = {
        "method": "grpo",
        "problem": args.problem,
        "model": after["model"],
        "rank": config.rank,
        "start": config.init_adapter or "fresh LoRA (B = 0)",
        "target_modules": list(config.target_modules),
        "trainable_parameters": trainable,
        "budget_completions": args.completions,
        "steps": steps,
        "num_generations": args.num_generations,
        "prompts_per_step": args.prompts_per_step,
        "lr": args.lr,
        "temperature": args.temperature,
        "beta": args.beta,
        "train_dtype": "fp32",
        "max_new_tokens": config.max_new_tokens,
        "completions_generated": reward.completions,
        "tokens_generated": reward.tokens,
        "train_wall_s": round(train_s, 1),
        "heldout_split": config.eval_split,
        "heldout_items": after["items"],
        "heldout_dtype": config.dtype,
        "heldout_accuracy_before": before["accuracy"] if before else None,
        "heldout_accuracy_after": after["accuracy"],
        "heldout_tokens_before": before["generated_tokens"] if before else None,
        "heldout_tokens_after": after["generated_tokens"],
        "train_reward_per_step": curve,
        "total_wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(["python", "-m", "gfo_llm.grpo", *(argv if argv is not None else sys.argv[1:])]),
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return result


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"GRPO baseline on {result['problem']} (LoRA r={result['rank']}, CPU)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    before = result["heldout_accuracy_before"]
    rows = [
        ("held-out accuracy before (greedy)", "-" if before is None else f"{before:.4f}"),
        ("held-out accuracy after (greedy)", f"{result['heldout_accuracy_after']:.4f}"),
        ("held-out items", str(result["heldout_items"])),
        ("completions generated (training)", str(result["completions_generated"])),
        ("tokens generated (training)", str(result["tokens_generated"])),
        ("optimizer steps", str(result["steps"])),
        ("training wall time (s)", f"{result['train_wall_s']:.1f}"),
        ("total wall time (s)", f"{result['total_wall_s']:.1f}"),
        ("peak RSS (MB)", f"{result['peak_rss_mb']:.0f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


if __name__ == "__main__":
    try:
        main()
    except GfoError as exc:  # bad input or a missing extra: one line and exit 2, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
