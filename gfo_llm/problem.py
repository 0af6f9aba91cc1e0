"""A reward task + a model + a LoRA search space = a `gfo.Problem` (ESSA, arXiv 2507.04453).

Fitness of a candidate is its mean reward over a mini-batch of training prompts, greedy decoding
or, with `temperature > 0`, over `samples_per_prompt` seeded samples per prompt whose random
numbers every candidate shares (or, with `fitness=likelihood`, the mean log-probability per token
of the task's reference completions, teacher-forced: ES on the SFT loss, forward passes only);
every candidate of a generation sees the same mini-batch (common random numbers) and each
generation a fresh one, both derived from `(seed, generation)` so that workers agree without
talking.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from gfo.errors import GfoError
from gfo.problem import Context, Evaluation, Problem, Sense
from gfo_llm.config import LLMConfig
from gfo_llm.extras import require
from gfo_llm.reward_guard import guarded_reward
from gfo_llm.sampling import Sampling
from gfo_llm.task import Example, Task, reference_completion

if TYPE_CHECKING:
    from gfo_llm.batched import Engine
    from gfo_llm.lora import LoRAWeights
    from gfo_llm.spaces import Space

SAMPLES_PER_GENERATION = 2  # completions of the generation's best candidate kept in samples.jsonl
_NO_REFERENCES = "problem.fitness=likelihood scores them: use problem.fitness=reward"


class LLMProblem(Problem):
    """Maximize a task's mean reward over LoRA adapters of a causal LM."""

    sense: ClassVar[Sense] = "max"
    Config: ClassVar[type] = LLMConfig
    task_class: ClassVar[type[Task]]
    # The initial spread, and the start the search space is built around (its basis: a PiSSA or a
    # random init, or the warm-start adapter), are in the checkpoint: a resume refuses to change them.
    state_settings: ClassVar[tuple[str, ...]] = ("stdev", "init", "init_adapter")
    # 8 candidates x 8 prompts (problem.batch_size) = 64 rows: one batch of rows in flight on a CPU
    # (problem.row_budget). On a GPU use --popsize 32 to 96 and problem.batch_size 32 to 100
    # (ESSA's values): the rows in flight are then sized from the free GPU memory.
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
        require("llm", f"problem {self.task_class.name}")  # before any import of transformers
        super().__init__(config)
        self.config: LLMConfig = config
        self.task = self.task_class(config)
        self.initial_stdev = config.stdev
        self.reward_failures = 0  # reward calls that raised, hung or returned no number per completion
        self.model: nn.Module | None = None
        self.tokenizer: Any = None
        self.model_id: str | None = None
        self.dtype: str | None = None  # of the loaded model, e.g. "float32"
        self.device: str | None = None  # where the loaded model runs, e.g. "cuda:0"
        self.residual: LoRAWeights | None = None
        self._space: Space | None = None  # from `prepare()`, or in a Ray driver from an actor
        self._engine: Engine | None = None
        self._dim: int | None = None
        self._ready = False

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        """Load the model once, build the initial adapter, its search space and the batched engine."""
        if self._ready:
            return
        from gfo_llm.adapters import load_peft_adapter
        from gfo_llm.batched import PopulationGenerator, eos_ids
        from gfo_llm.lora import init_lora
        from gfo_llm.model import load_model, model_id
        from gfo_llm.spaces import LoRASpace, SVDSpace

        torch.set_grad_enabled(False)  # forward passes only, everywhere in this process
        c = self.config
        if c.fitness == "likelihood":  # before minutes of model loading
            first = self.task.examples("train")[:1]
            if first:
                reference_completion(self.task, first[0], "", _NO_REFERENCES)
        if c.backend == "vllm":
            from gfo_llm.vllm_backend import require_vllm

            require_vllm()  # the install hint before minutes of model loading
        # vLLM generates on the GPU itself; the transformers model then only builds the space, on the
        # CPU unless the device is named, so that it takes no GPU memory from vLLM.
        device = "cpu" if c.backend == "vllm" and c.device == "auto" else c.device
        model, tokenizer = load_model(c.model, c.dtype, c.cache_dir, device)
        self.model, self.tokenizer = model, tokenizer
        self.model_id = model_id(model)
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.device = str(next(model.parameters()).device)
        if c.init_adapter:
            init = load_peft_adapter(c.init_adapter, model, rank=c.rank, target_modules=c.target_modules)
            self.residual = None
        else:
            init = init_lora(model, c.target_modules, c.rank, c.init)
            # PiSSA replaced W by W - B0 A0: exports add -B0 A0 back (rank 2r) for the original base.
            self.residual = init if c.init == "pissa" else None
        space = SVDSpace(init, c.alpha) if c.space == "svd" else LoRASpace(init)
        self._space = space
        if c.backend == "vllm":
            from gfo_llm.vllm_backend import vllm_generator

            # vLLM loads the ORIGINAL weights from the model directory; candidates go as PEFT adapters.
            self._engine = vllm_generator(
                self.model_id, tokenizer, space, c, eos_ids=eos_ids(model, tokenizer), residual=self.residual
            )
        else:
            self._engine = PopulationGenerator(
                model, tokenizer, space, row_budget=c.row_budget, engine=c.engine
            )
        self.train = self.task.examples("train")
        self.heldout = list(self.task.examples(c.eval_split))[: c.eval_limit]
        if not self.train:
            raise GfoError(f"{self.task.name}: the train split is empty")
        self._ready = True

    def close(self) -> None:
        """Release the engine and the model; the search space stays (a later evaluation prepares again)."""
        held = self.model is not None
        if self._engine is not None:
            self._engine.close()
        self._engine, self.model, self.tokenizer = None, None, None
        self._ready = False
        if held:
            import gc

            gc.collect()  # a transformers model holds reference cycles: free its memory now
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def driver_state(self) -> dict[str, Any]:
        """The search space and what exports need: the driver then never loads the model."""
        return {
            "space": self.space,
            "residual": self.residual,
            "model_id": self.model_id,
            "dtype": self.dtype,
            "device": self.device,
        }

    def adopt_driver_state(self, state: dict[str, Any]) -> None:
        self._space = state["space"]
        self.residual = state["residual"]
        self.model_id = state["model_id"]
        self.dtype = state["dtype"]
        self.device = state.get("device")

    @property
    def space(self) -> Space:
        """The search space (prepares the problem unless a worker handed it over)."""
        if self._space is None:
            self.prepare()
        assert self._space is not None
        return self._space

    @property
    def engine(self) -> Engine:
        """The population engine (prepares the problem first)."""
        self.prepare()
        assert self._engine is not None
        return self._engine

    @property
    def solution_length(self) -> int:  # type: ignore[override]
        if self._space is not None:
            return int(self._space.dim)
        if self._dim is None:
            self._dim = self._search_dim()
        return self._dim

    def _search_dim(self) -> int:
        """The search space's dimension from the model's config and the adapter's header: no weights.

        The same number `space.dim` gives after `prepare()` (a test checks both spaces and starts),
        with the same errors for a rank, target module or warm-start adapter that does not fit.
        """
        from gfo_llm.adapters import adapter_layout
        from gfo_llm.lora import init_shapes
        from gfo_llm.model import empty_model
        from gfo_llm.spaces import search_dim

        c = self.config
        model = empty_model(c.model, c.cache_dir)
        if c.init_adapter:
            shapes = adapter_layout(
                c.init_adapter, model, rank=c.rank, target_modules=c.target_modules
            ).shapes
        else:
            shapes = init_shapes(model, c.target_modules, c.rank)
        return search_dim(c.space, shapes, c.alpha)

    def initial_center(self) -> torch.Tensor:
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
        engine = self.engine
        batch = self.minibatch(context)
        prompts = self.prompts(batch)
        if self.config.fitness == "likelihood":
            return self._likelihood(population, batch, prompts)
        sampling = self.sampling(context)
        # A greedy call keeps the four-argument form that an `Engine` written before sampling takes.
        extra = {"sampling": sampling} if sampling is not None else {}
        result = engine.generate(population, prompts, self.config.max_new_tokens, self.task.stop, **extra)
        if sampling is not None and sampling.samples > 1:  # the result's columns: k samples a prompt
            batch = [ex for ex in batch for _ in range(sampling.samples)]
            prompts = [p for p in prompts for _ in range(sampling.samples)]
        failures = self.reward_failures
        where = f"in generation {context.generation}"
        rewards = torch.tensor(
            [
                self.rewards(result.completions[c], batch, f"candidate {c} {where}")
                for c in range(len(population))
            ],
            dtype=torch.float64,
        )
        fitness = rewards.mean(dim=1)  # every prompt has k columns: the mean of per-prompt means
        penalty: dict[str, torch.Tensor] = {}
        if self.config.kl_coef > 0:
            # GRPO's beta term on ES's fitness: the reward less beta x the KL to the start.
            kl = self.answer_kl(population, prompts, result)
            penalty = {"reward": fitness.clone(), "kl": kl}
            fitness = fitness - self.config.kl_coef * kl
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
                **self._rows_in_flight(len(population)),
                **penalty,
            },
            counters=counters,
            samples=samples,
        )

    def sampling(self, context: Context) -> Sampling | None:
        """How generation `context.generation` samples (None: greedy): the seeds depend on the run's
        seed, the generation, the prompt's place in the mini-batch and the sample only, so every
        candidate, every Ray actor and a resumed run draw the same random numbers for a row."""
        c = self.config
        if c.temperature == 0:
            return None
        return Sampling(
            temperature=c.temperature,
            top_p=c.top_p,
            samples=c.samples_per_prompt,
            seed=context.seed,
            generation=context.generation,
        )

    def answer_kl(self, vectors: torch.Tensor, prompts: Sequence[str], result: Any) -> torch.Tensor:
        """Each candidate's KL to the search's start (its initial centre: with a PiSSA start, the base
        model) on its own answers to `prompts` (a `GenerationResult` of `vectors`): exact over the
        vocabulary at every answer token, teacher-forced, mean per token. Costs two teacher-forced
        passes (candidate and start) over each candidate's answers."""
        from gfo_llm.batched import PopulationGenerator

        engine = self.engine
        if not isinstance(engine, PopulationGenerator):
            raise GfoError("the KL to the start needs problem.backend=transformers")
        start = self.space.center()
        kl = []
        for c, vector in enumerate(vectors):
            answers = result.token_ids[c] if result.token_ids is not None else result.completions[c]
            if not torch.isfinite(vector).all():
                kl.append(float("nan"))
                continue
            sums, counts = engine.kl(vector, start, prompts, answers)
            kl.append(float(sums.sum() / counts.sum()))
        return torch.tensor(kl, dtype=torch.float64)

    def _rows_in_flight(self, size: int) -> dict[str, torch.Tensor]:
        """The transformers engine's rows in flight of the last call, for the metrics (the size it
        chose for the device, or after an out-of-memory error)."""
        budget = getattr(self._engine, "row_budget", None)
        return {} if budget is None else {"rows_in_flight": torch.full((size,), float(budget))}

    def references(self, examples: Sequence[Example]) -> list[str]:
        """What `fitness=likelihood` scores: each example's reference completion plus EOS."""
        eos = self.tokenizer.eos_token
        return [reference_completion(self.task, ex, eos, _NO_REFERENCES) for ex in examples]

    def _likelihood(
        self, population: torch.Tensor, batch: Sequence[Example], prompts: Sequence[str]
    ) -> Evaluation:
        """Fitness: log-probability per token of the batch's references (plus EOS, as `gfo sft`
        trains on them), pooled over the batch: the negative of the SFT loss on these items."""
        from gfo_llm.batched import PopulationGenerator

        engine = self.engine
        assert isinstance(engine, PopulationGenerator)  # LLMConfig refuses another backend
        references = self.references(batch)
        sums, tokens = engine.log_likelihood(population, prompts, references)
        fitness = sums.sum(dim=1) / tokens.sum()
        fitness[~torch.isfinite(population).all(dim=1)] = float("nan")
        best = int(fitness.nan_to_num(nan=-torch.inf).argmax())
        samples = [
            {
                "candidate": best,
                "prompt": prompts[i],
                "reference": references[i],
                "log_likelihood_per_token": float(sums[best, i] / tokens[i]),
            }
            for i in range(min(SAMPLES_PER_GENERATION, len(prompts)))
        ]
        counters = {
            "scored_references": float(sums.numel()),
            "reference_tokens": float(tokens.sum()) * len(population),
        }
        return Evaluation(
            fitness=fitness, info=self._rows_in_flight(len(population)), counters=counters, samples=samples
        )

    def heldout_every(self) -> int:
        return self.config.eval_every

    def evaluate_heldout(self, solutions: torch.Tensor) -> torch.Tensor | Evaluation:
        """Mean reward of each solution on the held-out items and, with the transformers engine, the
        first solution's (the centre's) KL to the search's start on its own held-out answers: `kl`
        per answer token and `kl_per_answer`, NaN for the other rows (`heldout_kl` in the metrics)."""
        scores, records = self.score(solutions, self.heldout)
        from gfo_llm.batched import PopulationGenerator

        if not isinstance(self.engine, PopulationGenerator) or not records or "token_ids" not in records[0]:
            return scores  # vLLM: its answers are not teacher-forced by this process
        per_token, per_answer = self.heldout_kl(solutions[0], records)
        nan = torch.full((len(solutions) - 1,), float("nan"), dtype=torch.float64)
        info = {
            "kl": torch.cat([torch.tensor([per_token], dtype=torch.float64), nan]),
            "kl_per_answer": torch.cat([torch.tensor([per_answer], dtype=torch.float64), nan]),
        }
        return Evaluation(fitness=scores, info=info)

    def heldout_kl(self, vector: torch.Tensor, records: Sequence[dict[str, Any]]) -> tuple[float, float]:
        """KL(vector's model || the start's) on the answers in `records` (`score`'s, of `vector`),
        exact over the vocabulary at each answer token: mean per answer token and mean per answer.
        One teacher-forced pass of both models over the answers: the generation that produced them
        is reused, not repeated. The start itself is at KL 0 without a pass."""
        from gfo_llm.batched import PopulationGenerator

        engine = self.engine
        assert isinstance(engine, PopulationGenerator)  # evaluate_heldout checked it
        start = self.space.center()
        if not torch.isfinite(vector).all():
            return float("nan"), float("nan")
        kept = [r for r in records if r["token_ids"]]  # teacher forcing needs a token to score
        if not kept or torch.equal(vector.to(start.dtype), start):
            return 0.0, 0.0
        sums, counts = engine.kl(vector, start, [r["prompt"] for r in kept], [r["token_ids"] for r in kept])
        return float(sums.sum() / counts.sum()), float(sums.sum()) / len(records)

    def score(
        self, solutions: torch.Tensor, examples: Sequence[Example]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Mean reward of each solution on `examples`, and per-item records of the first solution."""
        engine = self.engine
        prompts = self.prompts(examples)
        result = engine.generate(solutions, prompts, self.config.max_new_tokens, self.task.stop)
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
        if result.token_ids is not None:  # exactly what the model chose (text may not round-trip)
            for record, ids in zip(records, result.token_ids[0], strict=True):
                record["token_ids"] = ids
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

        lora = self.space.to_lora(solution)
        assert self.model_id is not None  # set with the space
        return save_peft_adapter(
            lora,
            run_dir / "adapter",
            base_model_id=self.model_id,
            target_modules=self.config.target_modules,
            residual=self.residual,
        )

    def describe(self) -> dict[str, Any]:
        c = self.config
        space = self.space
        return {
            "task": self.task.name,
            "model": self.model_id,
            "dtype": self.dtype,
            "device": "vllm" if c.backend == "vllm" else self.device,
            "space": c.space,
            "search_dim": space.dim,
            "rank": c.rank,
            "modules": len(space.modules),
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
