"""gfo's scoring of an adapter against a plain PEFT evaluation of it, on the same items.

    python benchmarks/peft_agreement.py --eval runs/learning/arithmetic/eval-final --json FILE

`--eval` is a `gfo eval` folder (its eval.json names the problem, adapter, dtype and cap; its
completions.jsonl the exact prompts). The same adapter is loaded with `peft.PeftModel` on the
original model in the same dtype and generates greedily with `model.generate` on those prompts in
batches (the task's stop patterns cut both the same way); both are scored with the task's reward.
Prints and writes the row agreement (identical completions), both accuracies (reward >= 1) and
their gap. In fp32 the two agree row for row (tests); in bf16 rounding order differs (PEFT adds
the low-rank term inside its own layer), and this measures what that costs in accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--eval", type=Path, required=True, help="a gfo eval output folder")
    p.add_argument("--batch", type=int, default=32, help="rows per generate call")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from peft import PeftModel
    from transformers import GenerationConfig

    from gfo.registry import PROBLEMS
    from gfo_llm.batched import decode_rows, eos_ids
    from gfo_llm.decode import stop_length, stop_matcher
    from gfo_llm.model import load_model

    summary = json.loads((args.eval / "eval.json").read_text())
    rows = [json.loads(line) for line in (args.eval / "completions.jsonl").open()]
    cls: Any = PROBLEMS.get(summary["problem"])
    task = cls.task_class(cls.Config())
    model, tokenizer = load_model(summary["model"], summary["dtype"])
    peft = PeftModel.from_pretrained(model, summary["adapter"]).eval()
    eos = eos_ids(model, tokenizer)
    matcher = stop_matcher(task.stop, tokenizer)
    config = GenerationConfig(
        max_new_tokens=summary["max_new_tokens"],
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
    )
    texts: list[str] = []
    started = time.perf_counter()
    for i in range(0, len(rows), args.batch):
        prompts = [r["prompt"] for r in rows[i : i + args.batch]]
        enc = tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = peft.generate(**enc, generation_config=config)
        new = out[:, enc["input_ids"].shape[1] :]
        batch_texts, counts, _ = decode_rows(tokenizer, new, eos)
        if matcher is not None:
            for j, tokens in enumerate(new.tolist()):
                n = stop_length(tokens[: counts[j]], matcher)
                if n is not None:
                    batch_texts[j] = tokenizer.decode(tokens[:n], skip_special_tokens=True)
        texts += batch_texts
    seconds = time.perf_counter() - started
    examples = [r["example"] for r in rows]
    peft_rewards = task.reward(texts, examples)
    gfo_correct = [float(r["reward"]) >= 1 for r in rows]
    peft_correct = [r >= 1 for r in peft_rewards]
    same = sum(a == r["completion"] for a, r in zip(texts, rows, strict=True))
    result = {
        "eval": str(args.eval),
        "adapter": summary["adapter"],
        "dtype": summary["dtype"],
        "items": len(rows),
        "rows_identical": same,
        "row_agreement": same / len(rows),
        "gfo_accuracy": sum(gfo_correct) / len(rows),
        "peft_accuracy": sum(peft_correct) / len(rows),
        "accuracy_gap": (sum(gfo_correct) - sum(peft_correct)) / len(rows),
        "answers_agree": sum(a == b for a, b in zip(gfo_correct, peft_correct, strict=True)) / len(rows),
        "peft_seconds": round(seconds, 1),
    }
    print(
        f"{result['items']} items, {result['dtype']}: identical completions {same}/{len(rows)}, "
        f"gfo accuracy {result['gfo_accuracy']:.3f}, PEFT accuracy {result['peft_accuracy']:.3f}, "
        f"gap {result['accuracy_gap']:+.3f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
