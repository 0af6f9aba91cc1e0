"""GSM8K grade-school math (Cobbe et al. 2021): reward 1 when the final number matches the gold answer.

Data: `<data_dir>/gsm8k/{train,test}.jsonl` (fields `question`, `answer`, the answer ending in
`#### <number>`), where data_dir is `problem.data_dir` or else `$GFO_DATA_DIR`; without either, the
Hugging Face hub (`openai/gsm8k`, config `main`). Extraction follows lm-evaluation-harness's GSM8K
task: strict `#### N`, else a flexible fallback (see `problems._answers.extract_answer`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from gfo.errors import ConfigError, GfoError, first_line
from gfo_llm.config import LLMConfig
from gfo_llm.task import Example, Task, lazy_problem
from problems._answers import ANSWER_LINE, numeric_rewards

PROMPT = (
    "Solve the following math problem. Reason step by step, then give the final answer as a number "
    'on its own last line, in the form "#### <number>".\n\n{question}'
)
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations, e.g. "<<16-3-4=9>>"
_GOLD = re.compile(r"####\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)\s*$")


@dataclass(frozen=True)
class GSM8KConfig(LLMConfig):
    """GSM8K settings on top of the shared LLM settings."""

    format_bonus: float = field(
        default=0.0, metadata={"help": "added to the reward when the answer uses the strict '#### N' format"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.format_bonus <= 1.0:
            raise ConfigError(
                f"problem.format_bonus must be in [0, 1]; got {self.format_bonus}, use 0 (off) or e.g. 0.1"
            )


class GSM8K(Task):
    """Grade-school math word problems with a numeric answer."""

    name: ClassVar[str] = "gsm8k"
    Config: ClassVar[type[LLMConfig]] = GSM8KConfig
    stop: ClassVar[tuple[str, ...]] = (ANSWER_LINE,)
    config: GSM8KConfig

    def __init__(self, config: LLMConfig) -> None:
        super().__init__(config)
        self._examples: dict[str, list[dict[str, Any]]] = {}

    def examples(self, split: str) -> Sequence[Example]:
        if split not in self.splits:
            raise GfoError(f"gsm8k has no split {split!r}; use one of {', '.join(self.splits)}")
        if split not in self._examples:
            data_dir = self.config.data_dir or os.environ.get("GFO_DATA_DIR")
            rows = load_jsonl(Path(data_dir) / "gsm8k" / f"{split}.jsonl") if data_dir else _load_hub(split)
            self._examples[split] = rows
        return self._examples[split]

    def prompt(self, example: Example) -> str:
        return PROMPT.format(question=example["question"])

    def reward(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        targets = [example["target"] for example in examples]
        return numeric_rewards(completions, targets, self.config.format_bonus)

    def reference(self, example: Example) -> str:
        """The gold solution without its `<<...>>` calculator annotations."""
        return _CALCULATOR.sub("", example["answer"])


__getattr__ = lazy_problem(__name__, GSM8K)


def _example(question: Any, answer: Any) -> dict[str, Any] | None:
    """A checked example, or None if the fields are not strings or the answer lacks `#### N`."""
    if not isinstance(question, str) or not isinstance(answer, str):
        return None
    gold = _GOLD.search(answer)
    if gold is None:
        return None
    return {"question": question, "answer": answer, "target": gold[1].replace(",", "")}


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    """GSM8K rows from a JSON-lines file; a bad line is an error naming the file and line number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise GfoError(
            f"cannot read GSM8K file {path} ({err.strerror or err}); set problem.data_dir or GFO_DATA_DIR "
            "to a folder holding gsm8k/train.jsonl and gsm8k/test.jsonl"
        ) from err
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise GfoError(f"{path}:{number}: not valid JSON ({err.msg})") from err
        example = _example(row.get("question"), row.get("answer")) if isinstance(row, dict) else None
        if example is None:
            raise GfoError(
                f"{path}:{number}: expected an object with string fields 'question' and 'answer', "
                "the answer ending in '#### <number>'"
            )
        rows.append(example)
    return rows


def _load_hub(split: str) -> list[dict[str, Any]]:
    try:
        import datasets  # lazy: heavy, and only needed without a local copy

        dataset = datasets.load_dataset("openai/gsm8k", "main", split=split)
        rows = [_example(row["question"], row["answer"]) for row in dataset]
    except Exception as err:
        raise GfoError(
            f"cannot load GSM8K from the Hugging Face hub ({type(err).__name__}: {first_line(err)[:200]}); "
            "set GFO_DATA_DIR or problem.data_dir to a folder holding gsm8k/{train,test}.jsonl"
        ) from err
    if any(row is None for row in rows):
        raise GfoError(f"GSM8K {split} from the hub has an answer without '#### <number>'")
    return [row for row in rows if row is not None]
