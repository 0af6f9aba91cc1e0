"""KL between two models on one model's own answers: how far an adapter moved from a reference.

The field reports alignment as reward *against* KL to the reference model (TRL's GRPO `beta`, the
reward-KL frontier of RLHF papers). `answer_kl` computes, at every token of each answer, the KL
between the two models' next-token distributions, exact over the vocabulary, from two
teacher-forced passes over prompt + answer; it sums per answer. The models are the base model
with a PEFT adapter each (or none: the base model itself), through PEFT (`set_adapter`,
`disable_adapter`), so two adapters of any ranks and modules compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gfo.errors import GfoError

#: Padded positions per teacher-forced pass (each holds a vocabulary of float32 log-probabilities).
POSITIONS = 2048


@torch.inference_mode()
def answer_kl(
    model: Any,
    tokenizer: Any,
    adapter: str | Path | None,
    reference: str | Path | None,
    prompts: Sequence[str],
    answers: Sequence[Sequence[int]],
) -> list[float]:
    """KL(model + `adapter` || model + `reference`) summed over each answer's tokens (None: the base
    model; `answers` are token ids after each prompt, as the engine generated them). `model` is a
    plain causal LM (no adapter loaded); it is wrapped by PEFT here and unwrapped before returning."""
    from peft import PeftModel

    if len(prompts) != len(answers) or not all(answers):
        raise GfoError(
            f"answer_kl needs one non-empty answer per prompt; got {len(prompts)} and {len(answers)}"
        )
    if adapter is None and reference is None:
        return [0.0] * len(answers)
    # Names not inside PEFT's "lora_" prefix (PEFT warns that "a" or "r" could clash with its keys).
    names = {"mine": adapter, "reference": reference}
    wrapped: Any = None
    for name, path in names.items():
        if path is None:
            continue
        if wrapped is None:
            wrapped = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        else:
            wrapped.load_adapter(str(path), adapter_name=name)
    heads = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    device = next(model.parameters()).device
    sums = [0.0] * len(answers)
    try:
        order = sorted(range(len(answers)), key=lambda i: len(heads[i]) + len(answers[i]))
        start = 0
        while start < len(order):
            width = len(heads[order[start]]) + len(answers[order[start]])
            batch = [order[start]]
            while start + len(batch) < len(order):
                nxt = order[start + len(batch)]
                width = max(width, len(heads[nxt]) + len(answers[nxt]))
                if width * (len(batch) + 1) > POSITIONS:
                    break
                batch.append(nxt)
            start += len(batch)
            width = max(len(heads[i]) + len(answers[i]) for i in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            keep = torch.zeros(len(batch), width, dtype=torch.bool)  # positions that predict an answer token
            for row, i in enumerate(batch):
                seq = list(heads[i]) + list(answers[i])
                ids[row, width - len(seq) :] = torch.tensor(seq)
                mask[row, width - len(seq) :] = 1
                keep[row, width - len(answers[i]) - 1 : width - 1] = True
            position = (mask.cumsum(1) - 1).clamp(min=0)
            logp = [
                _log_probs(model, wrapped, names[side], side, ids, mask, position, device) for side in names
            ]
            kl = (logp[0].exp() * (logp[0] - logp[1])).sum(-1)
            kl = torch.where(keep.to(device), kl, torch.zeros_like(kl)).sum(-1).double().cpu()
            for row, i in enumerate(batch):
                sums[i] = float(kl[row])
    finally:
        if wrapped is not None:
            wrapped.unload()  # the plain model back, without the adapters
            # PEFT 0.18 leaves its config on the unwrapped model, and the next wrapping of it then
            # runs one adapter as the base model
            if hasattr(model, "peft_config"):
                del model.peft_config
    return sums


def _log_probs(
    model: Any,
    wrapped: Any,
    path: Any,
    side: str,
    ids: torch.Tensor,
    mask: torch.Tensor,
    position: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    inputs = {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": position.to(device),
    }
    if wrapped is None:
        logits = model(**inputs).logits
    elif path is None:
        with wrapped.disable_adapter():
            logits = wrapped(**inputs).logits
    else:
        wrapped.set_adapter(side)
        logits = wrapped(**inputs).logits
    return torch.log_softmax(logits.float(), dim=-1)
