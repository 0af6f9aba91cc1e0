"""A reward task + a model + a LoRA search space = a `gfo.Problem` (ESSA, arXiv 2507.04453).

Fitness of a candidate is its mean reward over a mini-batch of training prompts, greedy decoding;
every candidate of a generation sees the same mini-batch (common random numbers) and each generation
a fresh one, both derived from `(seed, generation)` so that workers agree without talking.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        rewards = torch.tensor(
            [self.task.reward(result.completions[c], batch) for c in range(len(population))],
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
            counters={"generated_tokens": float(result.total_tokens), "completions": float(rewards.numel())},
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
        rewards = [self.task.reward(result.completions[c], examples) for c in range(len(solutions))]
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
