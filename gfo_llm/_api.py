"""`gfo_llm.search`: ES on a language model's LoRA in one call, from a model and a task or a reward.

>>> import gfo_llm
>>> def short(completions, examples):  # any reward: a float per completion, higher is better
...     return [1.0 if len(text.split()) <= 5 else 0.0 for text in completions]
>>> prompts = [{"prompt": f"Describe the number {i}."} for i in range(12)]
>>> result = gfo_llm.search(
...     short, train=prompts[:8], test=prompts[8:], model=tiny_model_dir, algo="pgpe",
...     generations=2, popsize=4, batch_size=2, max_new_tokens=6, eval_limit=4, out=tmp / "short",
... )
>>> result.generations, (result.exported / "adapter_config.json").is_file()
(2, True)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from gfo._api import Summary
from gfo._api import search as gfo_search
from gfo.config import build
from gfo.errors import ConfigError
from gfo.loop import Callback
from gfo.registry import PROBLEMS
from gfo_llm.config import LLMConfig
from gfo_llm.task import Example, Task

Reward = Callable[[Sequence[str], Sequence[Example]], Sequence[float]]

__all__ = ["reward_task", "search"]


def search(
    task: type[Task] | str | Reward,
    *,
    model: str | Path | None = None,
    algo: str = "pgpe",
    out: str | Path | None = None,
    generations: int | None = None,
    popsize: int | None = None,
    seed: int = 0,
    train: Sequence[Example] | None = None,
    test: Sequence[Example] | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    callbacks: Sequence[Callback] = (),
    **settings: Any,
) -> Summary:
    """Align `model` (a hub id, a local directory or .gguf file; None: the bundled SmolLM2-135M) to
    `task` by a search over its LoRA adapter; the run folder `out` ends with the PEFT adapter
    (`Summary.exported`).

    `task` is a `Task` subclass, a registered task's name ("arithmetic"), or a reward function
    `reward(completions, examples) -> floats` together with `train` and `test` examples whose
    "prompt" key is the user message (`reward_task`). `settings` are the problem's (`gfo list`:
    `batch_size`, `max_new_tokens`, `space`, `device`, ...), the algorithm's and the run's, by key.
    """
    from gfo_llm.problem import LLMProblem

    is_task = isinstance(task, str) or (isinstance(task, type) and issubclass(task, Task))
    if is_task and (train is not None or test is not None):
        raise ConfigError("train= and test= go with a reward function; a Task brings its own examples")
    if isinstance(task, str):
        problem_class = PROBLEMS.get(task)
    elif isinstance(task, type) and issubclass(task, Task):
        problem_class = LLMProblem.for_task(task)
    elif callable(task) and not isinstance(task, type):
        if train is None or test is None:
            raise ConfigError("a reward function needs train= and test= examples, each with a 'prompt' key")
        problem_class = LLMProblem.for_task(reward_task(task, train, test))
    else:
        raise ConfigError(f"task must be a Task class, a task's name or a reward function; got {task!r}")
    config_class = problem_class.Config
    fields = {f.name for f in dataclasses.fields(config_class)}
    values = {k: v for k, v in settings.items() if k in fields}
    if model is not None:
        values["model"] = str(model)
    config = build(config_class, values, "problem")
    rest = {k: v for k, v in settings.items() if k not in fields}
    return gfo_search(
        problem_class(config),
        algo,
        out=out,
        generations=generations,
        popsize=popsize,
        seed=seed,
        resume=resume,
        force=force,
        progress=progress,
        callbacks=callbacks,
        **rest,
    )


def reward_task(
    reward: Reward, train: Sequence[Example], test: Sequence[Example], name: str | None = None
) -> type[Task]:
    """A `Task` class of a reward function over fixed examples, each with a "prompt" key (the user
    message; the model's chat template is applied by gfo_llm)."""
    for split, rows in (("train", train), ("test", test)):
        if not rows or not all(isinstance(r, dict) and isinstance(r.get("prompt"), str) for r in rows):
            raise ConfigError(f"{split} must be a non-empty list of dicts with a 'prompt' string")
    splits = {"train": list(train), "test": list(test)}
    score = reward  # `reward` is also the method's name inside the class body

    class RewardTask(Task):
        __doc__ = score.__doc__ or f"The reward {getattr(score, '__name__', 'function')} on given prompts."
        Config: ClassVar[type[LLMConfig]] = LLMConfig

        def examples(self, split: str) -> Sequence[Example]:
            if split not in splits:
                raise ConfigError(f"split must be train or test; got {split!r}")
            return splits[split]

        def prompt(self, example: Example) -> str:
            return str(example["prompt"])

        def reward(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
            return [float(r) for r in score(completions, examples)]

    RewardTask.name = name or str(getattr(reward, "__name__", "reward"))
    # The class is named after the reward: its run folder and checkpoint fingerprint tell rewards apart.
    RewardTask.__name__ = RewardTask.__qualname__ = re.sub(r"\W", "_", RewardTask.name)
    return RewardTask
