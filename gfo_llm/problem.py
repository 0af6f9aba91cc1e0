"""A reward task + a model + a LoRA search space = a `gfo.Problem` (ESSA, arXiv 2507.04453).

Fitness of a candidate is its mean reward over a mini-batch of training prompts, greedy decoding;
every candidate of a generation sees the same mini-batch (common random numbers) and each generation
a fresh one, both derived from `(seed, generation)` so that workers agree without talking.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from gfo.errors import GfoError
from gfo.problem import Context, Evaluation, Problem, Sense
from gfo_llm.config import LLMConfig
from gfo_llm.task import Example, Task

SAMPLES_PER_GENERATION = 2  # completions of the generation's best candidate kept in samples.jsonl


class LLMProblem(Problem):
    """Maximize a task's mean reward over LoRA adapters of a causal LM."""

    sense: ClassVar[Sense] = "max"
    Config: ClassVar[type] = LLMConfig
    task_class: ClassVar[type[Task]]
    # The initial spread, and the start the search space is built around (its basis: a PiSSA or a
    # random init, or the warm-start adapter), are in the checkpoint: a resume refuses to change them.
    state_settings: ClassVar[tuple[str, ...]] = ("stdev", "init", "init_adapter")
    # 8 candidates x 8 prompts (problem.batch_size) = 64 rows: one batched generate call per
    # generation (problem.row_budget), about 2.5 min at 96 tokens on a 2-core CPU. On a GPU use
    # --popsize 32 to 96 and problem.batch_size 32 to 100 (ESSA's values).
    default_popsize = 8

    @classmethod
    def for_task(cls, task_class: type[Task]) -> type[LLMProblem]:
        """The registrable problem class of a task: `Problem = LLMProblem.for_task(MyTask)`."""
        doc = (task_class.__doc__ or task_class.name).strip().split("\n")[0]
        return type(
            f"{task_class.__name__}Problem",
            (cls,),
            {
                "task_class": task_class,
                "Config": task_class.Config,
                "__module__": task_class.__module__,
                "__doc__": doc,
            },
        )

    def __init__(self, config: LLMConfig) -> None:
        super().__init__(config)
        self.config: LLMConfig = config
        self.task = self.task_class(config)
        self.initial_stdev = config.stdev
        self.reward_failures = 0  # reward calls that raised, hung or returned no number per completion
        self._ready = False

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        """Load the model once, build the initial adapter, its search space and the batched engine."""
        if self._ready:
            return
        from gfo_llm.batched import PopulationGenerator
        from gfo_llm.model import load_model, model_id
        from gfo_llm.spaces import LoRASpace, SVDSpace, init_lora, load_peft_adapter

        torch.set_grad_enabled(False)  # forward passes only, everywhere in this process
        c = self.config
        if c.backend == "vllm":
            from gfo_llm.vllm_backend import require_vllm

            require_vllm()  # the install hint before minutes of model loading
        self.model, self.tokenizer = load_model(c.model, c.dtype, c.cache_dir)
        self.model_id = model_id(self.model)
        if c.init_adapter:
            self.init = load_peft_adapter(
                c.init_adapter, self.model, rank=c.rank, target_modules=c.target_modules
            )
            self.residual = None
        else:
            self.init = init_lora(self.model, c.target_modules, c.rank, c.init)
            # PiSSA replaced W by W - B0 A0: exports add -B0 A0 back (rank 2r) for the original base.
            self.residual = self.init if c.init == "pissa" else None
        self.space = SVDSpace(self.init, c.alpha) if c.space == "svd" else LoRASpace(self.init)
        if c.backend == "vllm":
            from gfo_llm.vllm_backend import vllm_generator

            # vLLM loads the ORIGINAL weights from the model directory; candidates go as PEFT adapters.
            self.engine: Any = vllm_generator(self)
        else:
            self.engine = PopulationGenerator(
                self.model, self.tokenizer, self.space, row_budget=c.row_budget, engine=c.engine
            )
        self.train = self.task.examples("train")
        self.heldout = list(self.task.examples(c.eval_split))[: c.eval_limit]
        if not self.train:
            raise GfoError(f"{self.task.name}: the train split is empty")
        self._ready = True

    @property
    def solution_length(self) -> int:  # type: ignore[override]
        self.prepare()
        return int(self.space.dim)

    def initial_center(self) -> torch.Tensor:
        self.prepare()
        return self.space.center()

    # ------------------------------------------------------------------ evaluation

    def minibatch(self, context: Context) -> list[Example]:
        """Generation g's prompts: slice g of a sequence of seeded shuffles of the train split (epochs)."""
        n, size = len(self.train), self.config.batch_size
        start = context.generation * size
        indices: list[int] = []
        epoch = start // n
        offset = start % n
        while len(indices) < size:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(context.seed * 100_003 + epoch))
            indices.extend(order[offset : offset + size - len(indices)].tolist())
            epoch, offset = epoch + 1, 0
        return [self.train[i] for i in indices]

    def prompts(self, examples: Sequence[Example]) -> list[str]:
        from gfo_llm.model import chat_prompt

        return [
            chat_prompt(self.tokenizer, self.task.prompt(ex), self.config.system_prompt) for ex in examples
        ]

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        self.prepare()
        batch = self.minibatch(context)
        prompts = self.prompts(batch)
        result = self.engine.generate(population, prompts, self.config.max_new_tokens, self.task.stop)
        failures = self.reward_failures
        where = f"in generation {context.generation}"
        rewards = torch.tensor(
            [
                self.rewards(result.completions[c], batch, f"candidate {c} {where}")
                for c in range(len(population))
            ],
            dtype=torch.float64,
        )
        fitness = rewards.mean(dim=1)
        # A non-finite candidate still decodes (to garbage that scores like any wrong answer): mark it
        # NaN so the loop counts it and ranks it last instead of scoring it as a plain 0.
        fitness[~torch.isfinite(population).all(dim=1)] = float("nan")
        best = int(fitness.nan_to_num(nan=-torch.inf).argmax())
        samples = [
            {
                "candidate": best,
                "prompt": prompts[i],
                "completion": result.completions[best][i],
                "reward": float(rewards[best, i]),
            }
            for i in range(min(SAMPLES_PER_GENERATION, len(prompts)))
        ]
        counters = {"generated_tokens": float(result.total_tokens), "completions": float(rewards.numel())}
        if self.reward_failures > failures:
            counters["reward_failures"] = float(self.reward_failures - failures)
        return Evaluation(
            fitness=fitness,
            info={
                "capped_fraction": torch.tensor(
                    [1 - sum(f) / len(f) for f in result.finished], dtype=torch.float64
                ),
                "completion_tokens": torch.tensor(
                    [sum(t) / len(t) for t in result.num_tokens], dtype=torch.float64
                ),
            },
            counters=counters,
            samples=samples,
        )

    def heldout_every(self) -> int:
        return self.config.eval_every

    def evaluate_heldout(self, solutions: torch.Tensor) -> torch.Tensor:
        return self.score(solutions, self.heldout)[0]

    def score(
        self, solutions: torch.Tensor, examples: Sequence[Example]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Mean reward of each solution on `examples`, and per-item records of the first solution."""
        self.prepare()
        prompts = self.prompts(examples)
        result = self.engine.generate(solutions, prompts, self.config.max_new_tokens, self.task.stop)
        rewards = [
            self.rewards(result.completions[c], examples, f"solution {c} on {len(examples)} scored item(s)")
            for c in range(len(solutions))
        ]
        records = [
            {"prompt": p, "completion": text, "reward": r, "tokens": n, "finished": done}
            for p, text, r, n, done in zip(
                prompts,
                result.completions[0],
                rewards[0],
                result.num_tokens[0],
                result.finished[0],
                strict=True,
            )
        ]
        return torch.tensor([sum(r) / len(r) for r in rewards], dtype=torch.float64), records

    def rewards(self, completions: Sequence[str], examples: Sequence[Example], where: str) -> list[float]:
        """The task's rewards of one candidate's completions, NaN where the reward failed (see
        `guarded_reward`); each failure is a warning naming the task, the candidate and the item."""
        rewards, problem = guarded_reward(self.task, completions, examples, self.config.reward_timeout_s)
        if problem is not None:
            self.reward_failures += 1
            warnings.warn(
                f"{self.task.name}: the reward of {where} {problem}; that candidate gets NaN "
                f"({self.reward_failures} reward failure(s) so far)",
                stacklevel=2,
            )
        return rewards

    # ------------------------------------------------------------------ results

    def export(self, solution: torch.Tensor, run_dir: Path) -> Path | None:
        """`run_dir/adapter`: a standard PEFT directory for the ORIGINAL base model."""
        from gfo_llm.adapters import save_peft_adapter

        self.prepare()
        return save_peft_adapter(
            self.space.to_lora(solution),
            run_dir / "adapter",
            base_model_id=self.model_id,
            target_modules=self.config.target_modules,
            residual=self.residual,
        )

    def describe(self) -> dict[str, Any]:
        self.prepare()
        c = self.config
        return {
            "task": self.task.name,
            "model": self.model_id,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "space": c.space,
            "search_dim": self.solution_length,
            "rank": c.rank,
            "modules": len(self.space.modules),
            "init": c.init_adapter or c.init,
        }

    def fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {
            **super().fingerprint(),
            "model": c.model,
            "space": c.space,
            "rank": c.rank,
            "alpha": c.alpha,
            "target_modules": list(c.target_modules),
        }


# ---------------------------------------------------------------------- rewards we do not control


def guarded_reward(
    task: Task, completions: Sequence[str], examples: Sequence[Example], timeout_s: float | None
) -> tuple[list[float], str | None]:
    """`task.reward(completions, examples)` as one float per completion, and what went wrong (None:
    nothing).

    A task may be third-party code. A reward that raises, returns the wrong number of values or
    something that is not a number, or takes longer than `timeout_s` seconds, gives every completion
    NaN; a non-finite value becomes NaN where it is. Either way the candidate's fitness is NaN, which
    the loop counts and ranks last, and the run goes on. With a time limit the call runs in a daemon
    thread (no signal: `signal.alarm` works on the main thread only, and Ray actors evaluate
    elsewhere). A hung pure-Python reward cannot be killed: its thread is abandoned and may keep a
    core busy until the process exits.
    """
    n = len(completions)
    nan = [math.nan] * n
    try:
        returned = _call(task.reward, completions, examples, timeout_s)
    except TimeoutError:
        return nan, f"took more than {timeout_s:g} s on {_items(n)} (the call was abandoned)"
    except Exception as exc:
        culprit = _culprit(task, completions, examples, timeout_s)
        return nan, f"raised {type(exc).__name__}: {exc} on {culprit}"
    try:
        values = [float(v) for v in returned]
    except (TypeError, ValueError):
        return nan, f"returned {_short(returned)}, not one number per completion, on {_items(n)}"
    if len(values) != n:
        return nan, f"returned {len(values)} value(s) for {n} completion(s)"
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        fixed = [math.nan if i in bad else v for i, v in enumerate(values)]
        return fixed, f"returned {values[bad[0]]} on {_item(bad[0], examples)}{more}"
    return values, None


def _call(
    reward: Callable[[Sequence[str], Sequence[Example]], Any],
    completions: Sequence[str],
    examples: Sequence[Example],
    timeout_s: float | None,
) -> Any:
    if timeout_s is None:
        return reward(completions, examples)
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = reward(completions, examples)
        except Exception as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="gfo-reward", daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


def _culprit(
    task: Task, completions: Sequence[str], examples: Sequence[Example], timeout_s: float | None
) -> str:
    """The item a raising reward fails on: each is retried alone (rewards are pure functions)."""
    for i, (completion, example) in enumerate(zip(completions, examples, strict=True)):
        try:
            _call(task.reward, [completion], [example], timeout_s)
        except TimeoutError:
            break
        except Exception:
            return _item(i, examples)
    return _items(len(completions))


def _item(i: int, examples: Sequence[Example]) -> str:
    return f"item {i} of the batch {_short(examples[i])}"


def _items(n: int) -> str:
    return f"the batch of {n} item(s)"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(dict(value) if isinstance(value, dict) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
