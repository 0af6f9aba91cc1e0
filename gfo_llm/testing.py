"""Conformance suite for reward tasks, in the pattern of `gfo.testing` (Optuna's `pytest_samplers`).

A task's test file subclasses `TaskConformance` and names the task; pytest runs every check against
it. gfo's own tests apply it to every registered task (tests/test_conformance.py):

    from gfo_llm.testing import TaskConformance

    class TestReverse(TaskConformance):
        task_cls = Reverse

It lives here, not in `gfo.testing`, because a task (prompts, completions, rewards) is a language-
model concept and gfo knows none. No model is loaded: a task never touches one. Needs pytest.

`tiny_model` is the other thing a plug-in's tests want: a random 2-layer Llama with the bundled
tokenizer, for exercising the LLM machinery in seconds.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from gfo.testing._config import assert_config_conforms, subject
from gfo_llm.config import LLMConfig
from gfo_llm.model import _MODEL_ID_ATTR, _prepare, load_bundled_tokenizer
from gfo_llm.task import Example, Task

#: Pieces a model (or an attacker) might repeat: answer markers, digits in other scripts,
#: operators, nesting, control characters.
UNTRUSTED_UNITS: tuple[str, ...] = (
    "(", ")", "((1+2)*", "9", "1,", ",000", "-", "−", "$", ".", "0.", "#### ", "####", "#### 1",
    "answer is ", "Answer: ", "<answer>", "</answer>", "<answer>(", "1+", "*9", "/0", "**", " = ",
    "\n", " ", "١٢٣", "𝟗", "½", "\x00", "e9", "The answer is 7. ",
)  # fmt: skip

#: Filled by the completions of `test_model_output_is_data_never_code` if anything runs them.
CANARY: list[str] = []
_CODE = (
    "__import__('gfo_llm.testing').CANARY.append('eval')",
    "import gfo_llm.testing as t; t.CANARY.append('exec')",
    "(lambda: __import__('gfo_llm.testing').CANARY.append('lambda'))()",
)
_WRAPPERS = ("{}", "<answer>{}</answer>", "#### {}", "The answer is {}.", "```python\n{}\n```", "{}\n#### 1")


class TaskConformance:
    """Conformance suite for a `gfo_llm.task.Task`: subclass it as `TestSomething` and set

    - `task_cls`: the task, built as every task is, `task_cls(config)`;
    - `config`: the config to test it with (default: `task_cls.Config()`).

    When the config needs other fixtures (a data folder), override the fixture `task_and_config`
    instead, returning `(task_cls, config)`: class-scoped, so a classmethod under
    `@pytest.fixture(scope="class")`.
    """

    task_cls: ClassVar[type[Task]]
    config: ClassVar[LLMConfig | None] = None
    #: Every reward lies in [low, high]; raise `high` for a config with a format bonus.
    reward_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    #: Examples per split that the per-example checks (prompts, references) read.
    max_examples: ClassVar[int] = 200
    #: CPU seconds one reward call may take on one completion of up to 1 MB.
    seconds_per_call: ClassVar[float] = 0.25
    #: Each unit is repeated to each length: up to the 20,000 characters the built-in tasks read,
    #: and to 1 MB, which a reward should not read at all.
    untrusted_units: ClassVar[tuple[str, ...]] = UNTRUSTED_UNITS
    untrusted_lengths: ClassVar[tuple[int, ...]] = (20_000, 1_000_000)

    @pytest.fixture(scope="class")
    @classmethod
    def task_and_config(cls) -> tuple[type[Task], LLMConfig]:
        """The task under test and the config it is built with."""
        return subject(cls, "task_cls", "task_and_config")

    @pytest.fixture(scope="class")
    @classmethod
    def task(cls, task_and_config: tuple[type[Task], LLMConfig]) -> Task:
        task_cls, config = task_and_config
        return task_cls(config)

    @pytest.fixture(scope="class")
    @classmethod
    def examples(cls, task: Task) -> dict[str, list[Example]]:
        """Every example of every split."""
        return {split: list(task.examples(split)) for split in task.splits}

    def some(self, examples: dict[str, list[Example]]) -> list[Example]:
        """The first `max_examples` of each split."""
        return [ex for split in examples.values() for ex in split[: self.max_examples]]

    def assert_rewards(self, rewards: Any, n: int) -> None:
        low, high = self.reward_range
        assert isinstance(rewards, list) and len(rewards) == n, (
            f"expected a list of {n} floats; got {rewards!r}"
        )
        for reward in rewards:
            assert isinstance(reward, float) and low <= reward <= high, (
                f"reward {reward!r} is not a float in [{low}, {high}] (set reward_range if that is wrong)"
            )

    # ------------------------------------------------------------------ declarations

    def test_declares_a_name_and_a_frozen_config(self, task_and_config: tuple[type[Task], LLMConfig]) -> None:
        cls, config = task_and_config
        assert issubclass(cls, Task)
        assert isinstance(cls.name, str) and cls.name.strip(), (
            f"name must be a non-empty string; got {cls.name!r}"
        )
        assert issubclass(cls.Config, LLMConfig), "Config must extend gfo_llm.config.LLMConfig"
        assert_config_conforms(cls.Config, config, "problem")
        assert "train" in cls.splits and config.eval_split in cls.splits, (cls.splits, config.eval_split)
        for pattern in cls.stop:
            re.compile(pattern)

    # ------------------------------------------------------------------ data

    def test_examples_are_plain_and_the_same_every_time(
        self, task_and_config: tuple[type[Task], LLMConfig], task: Task, examples: dict[str, list[Example]]
    ) -> None:
        """Data order is a pure function of the config: a resume or another worker sees the same items."""
        cls, config = task_and_config
        other = cls(config)
        for split, rows in examples.items():
            assert rows, f"split {split!r} is empty"
            assert all(isinstance(row, Mapping) for row in rows), split
            # `gfo eval` writes each example to completions.jsonl: it reads back equal.
            assert json.loads(json.dumps([dict(row) for row in rows])) == [dict(row) for row in rows], split
            assert list(task.examples(split)) == rows, f"a second call changed split {split!r}"
            assert list(other.examples(split)) == rows, f"another instance has another split {split!r}"

    def test_training_prompts_are_never_heldout_prompts(
        self, task: Task, examples: dict[str, list[Example]]
    ) -> None:
        train = {task.prompt(ex) for ex in examples["train"]}
        for split, rows in examples.items():
            if split != "train":
                shared = train & {task.prompt(ex) for ex in rows}
                assert not shared, (
                    f"{len(shared)} prompt(s) of {split!r} are training prompts: {sorted(shared)[:1]}"
                )

    def test_prompts_are_text(self, task: Task, examples: dict[str, list[Example]]) -> None:
        for example in self.some(examples):
            prompt = task.prompt(example)
            assert isinstance(prompt, str) and prompt.strip(), (prompt, example)
            assert task.prompt(example) == prompt

    def test_the_reference_scores_one(self, task: Task, examples: dict[str, list[Example]]) -> None:
        """`gfo eval` counts a reward >= 1 as correct, and `gfo sft` trains on the references; cut
        where generation would stop (`stop`), a reference still scores 1."""
        pairs = [(ref, ex) for ex in self.some(examples) if (ref := task.reference(ex)) is not None]
        if not pairs:
            pytest.skip("the task has no reference completions")
        assert all(isinstance(ref, str) for ref, _ in pairs)
        rows = [ex for _, ex in pairs]
        for texts in ([ref for ref, _ in pairs], [_stopped(ref, task.stop) for ref, _ in pairs]):
            rewards = task.reward(texts, rows)
            self.assert_rewards(rewards, len(pairs))
            wrong = [(text, ex) for text, ex, reward in zip(texts, rows, rewards, strict=True) if reward < 1]
            assert not wrong, f"{len(wrong)} reference(s) score below 1, e.g. {wrong[0]}"

    # ------------------------------------------------------------------ the reward

    def test_reward_is_a_pure_batch_function(self, task: Task, examples: dict[str, list[Example]]) -> None:
        """One float per completion, the same whatever else is in the batch, in any order, every time."""
        items = examples["train"][:4]
        references = [task.reference(ex) or "" for ex in items]
        texts = [*references, "", " ", "I do not know.", "#### 1", "<answer>1 + 1</answer>", "\x00", "١٢٣"]
        texts += [task.prompt(ex) for ex in items]
        batch = [(text, items[i % len(items)]) for i, text in enumerate(texts)]
        completions, rows = [text for text, _ in batch], [ex for _, ex in batch]
        rewards = task.reward(completions, rows)
        self.assert_rewards(rewards, len(batch))
        assert task.reward(completions, rows) == rewards
        assert [task.reward([text], [ex])[0] for text, ex in batch] == rewards
        assert task.reward(completions[::-1], rows[::-1]) == rewards[::-1]

    def test_reward_refuses_a_length_mismatch(self, task: Task, examples: dict[str, list[Example]]) -> None:
        """Two completions for one example is a bug in the caller: it raises instead of guessing."""
        with pytest.raises(ValueError):
            task.reward(["1", "2"], examples["train"][:1])

    def test_model_output_is_data_never_code(self, task: Task, examples: dict[str, list[Example]]) -> None:
        """Completions that would leave a mark if anything ran them score like any other text."""
        completions = [wrapper.format(code) for code in _CODE for wrapper in _WRAPPERS]
        example = examples["train"][0]
        CANARY.clear()
        rewards = task.reward(completions, [example] * len(completions))
        assert CANARY == [], f"the reward ran a completion as code: {CANARY}"
        self.assert_rewards(rewards, len(completions))

    def test_untrusted_text_takes_bounded_time(self, task: Task, examples: dict[str, list[Example]]) -> None:
        """Each unit repeated to each length: a regex that backtracks or a parser that recurses shows here."""
        example = examples["train"][0]
        for length in self.untrusted_lengths:
            for unit in self.untrusted_units:
                text = (unit * (length // len(unit) + 1))[:length]
                start = time.process_time()  # CPU time: a busy machine does not make a reward slow
                rewards = task.reward([text], [example])
                seconds = time.process_time() - start
                assert seconds < self.seconds_per_call, f"{seconds:.2f} s on {unit!r} * {length // len(unit)}"
                self.assert_rewards(rewards, 1)


def _stopped(text: str, patterns: Sequence[str]) -> str:
    """`text` cut as generation cuts it: the shortest prefix in which a stop pattern matches."""
    compiled = [re.compile(p) for p in patterns]
    if not any(p.search(text) for p in compiled):
        return text
    return next(text[:n] for n in range(1, len(text) + 1) if any(p.search(text[:n]) for p in compiled))


__all__ = ["CANARY", "UNTRUSTED_UNITS", "TaskConformance"]


def tiny_model(seed: int = 0, cache_dir: str | None = None) -> tuple[nn.Module, Any]:
    """A randomly initialized 2-layer Llama with the bundled SmolLM2 tokenizer, for fast tests.

    Weights come from `seed`, so two calls with the same seed give the same model. The init spread
    is larger than a real model's so that greedy decoding has clear winners (no float near-ties).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_bundled_tokenizer(cache_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    setattr(model, _MODEL_ID_ATTR, f"gfo-tiny-llama-seed{seed}")
    return _prepare(model, tokenizer)
