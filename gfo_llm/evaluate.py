"""Mean reward and accuracy of a model, or of a model plus a PEFT adapter, on a task split (`gfo eval`).

Two numbers, named as what they are: `mean_reward` (the task's reward averaged over the items, what
a search maximizes and its held-out scores report) and `accuracy` (`correct / items`, an item being
correct when its reward is >= 1: an exact answer). With partial credit (`problem.format_bonus`,
the fraction of instructions followed) the two differ; with 0/1 rewards they agree.

The items go through the same path as the search's held-out evaluation (`LLMProblem.score`: the
task's prompt in the chat template, greedy decoding with the batched engine, the task's reward), so
`gfo eval --adapter RUN/adapter` on the held-out items reproduces the run's held-out score.

The problem is built with the LoRA space (its centre is the initial adapter exactly, with no SVD
round-off) and, without an adapter, the random init (B = 0: the low-rank term is exactly zero and
the base weights are untouched), so the numbers are those of the model itself.

With `samples=k`, each item also gets k seeded samples (`gfo_llm.sampling`) at `problem.temperature`,
or `SAMPLE_TEMPERATURE` when that is 0 (greedy); the summary's `sampled` section reports pass@1
(the mean over the k samples of each item being correct) and pass@k (Chen et al. 2021's unbiased
estimator, which with n = k samples is "any sample correct") beside the greedy accuracy.

`compare` scores two of them (adapter A and adapter B, or the model alone) on the same items and
pairs the per-item outcomes (`gfo.stats`: Wilson intervals, exact McNemar test).

Items that prove a trained adapter must be fresh: neither trained on nor used to select it.
`fresh_items` gives the `gfo eval` arguments that draw them (another data seed's test stream for a
generated task, or the test split past a search's selection items) and `unseen` the filter that
drops any that the training stream holds all the same (a generated task can repeat an item).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gfo import strictjson
from gfo.checkpoint import atomic_write
from gfo.config import build
from gfo.errors import GfoError
from gfo.registry import PROBLEMS
from gfo_llm.config import LLMConfig
from gfo_llm.model import resolve_dtype
from gfo_llm.task import Example

if TYPE_CHECKING:
    from gfo_llm.problem import LLMProblem
    from gfo_llm.sampling import Sampling

COMPLETIONS = "completions.jsonl"
RESULT = "eval.json"
COMPLETIONS_B = "completions_b.jsonl"  # with --compare: B's records, as completions.jsonl
PAIRS = "compare.jsonl"  # with --compare: per item, the rewards and correctness of A and B
BASE = "base"  # --compare base: the model without any adapter

#: (A correct, B correct) -> the item's outcome for A
OUTCOMES = {(True, True): "both", (False, False): "neither", (True, False): "gained", (False, True): "lost"}

#: progress(done_items, total_items, mean_reward_so_far)
Progress = Callable[[int, int, float], None]
#: progress(label, done_items, total_items, mean_reward_so_far); label "A" or "B" with --compare
LabelledProgress = Callable[[str, int, int, float], None]


#: data_seed of the fresh test stream of generated tasks (training and selection use the default 0)
FRESH_SEED = 7

#: `gfo eval --samples`' temperature when problem.temperature is 0 (greedy): the temperature of gfo's
#: GRPO baseline (gfo_llm/grpo.py), and Codex's for pass@k with k > 1 (Chen et al. 2021, fig. 5).
SAMPLE_TEMPERATURE = 0.8


def fresh_items(problem_name: str, settings: Mapping[str, Any], items: int, how: str) -> list[str]:
    """`gfo eval` arguments that score `items` fresh items of a problem whose every step runs with
    `settings` (problem keys, a search's `eval_limit` among them).

    `how` is "seed" (the test stream of data seed `FRESH_SEED`, drawn as long as asked: a generated
    task's first items do not depend on `test_size`) or "offset" (the test split past the first
    `eval_limit` items, which a search's held-out evaluation selects on).
    """
    fields = {f.name: f.default for f in dataclasses.fields(PROBLEMS.get(problem_name).Config)}
    if how == "seed":
        if "data_seed" not in fields:
            raise GfoError(
                f"fresh items by seed need a generated task; {problem_name} has no data_seed, use offset"
            )
        args = ["--set", f"problem.data_seed={FRESH_SEED}"]
        if items > int(settings.get("test_size", fields["test_size"])):
            args += ["--set", f"problem.test_size={items}"]
        return args
    if how == "offset":
        return ["--offset", str(int(settings.get("eval_limit", fields["eval_limit"])))]
    raise GfoError(f"fresh items come by seed or offset; got {how!r}")


def unseen(problem_name: str, settings: Mapping[str, str], examples: Sequence[Example]) -> list[bool]:
    """Which `examples` are in neither split of the training stream (the default data seed) of the
    problem built with `settings` (`--set` values): the others are contaminated and must not count."""
    cls: Any = PROBLEMS.get(problem_name)
    training = cls.task_class(build(cls.Config, dict(settings), "problem"))
    seen = {
        json.dumps(dict(ex), sort_keys=True) for split in ("train", "test") for ex in training.examples(split)
    }
    return [json.dumps(dict(ex), sort_keys=True) not in seen for ex in examples]


def adapter_settings(path: str | Path) -> tuple[int, tuple[str, ...] | None]:
    """Rank and target modules recorded in a PEFT adapter's `adapter_config.json`.

    An adapter exported by `gfo run` after a PiSSA start has rank 2r (see `gfo_llm.adapters`), so
    the rank to load it with is read from the file, never assumed. Target modules are None when
    the file names them by a regular expression.
    """
    file = Path(path).expanduser() / "adapter_config.json"
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        raise GfoError(
            f"adapter {str(path)!r} has no adapter_config.json; pass a PEFT LoRA adapter directory "
            "(e.g. RUN/adapter from `gfo run` or OUT/adapter from `gfo sft`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise GfoError(f"cannot read {file}: {exc}; pass a PEFT LoRA adapter directory") from None
    if not isinstance(config, dict) or not isinstance(config.get("r"), int):
        raise GfoError(f"{file} has no integer rank 'r'; pass a PEFT LoRA adapter directory")
    modules = config.get("target_modules")
    if isinstance(modules, list) and modules:
        return config["r"], tuple(sorted(str(m) for m in modules))
    return config["r"], None


def eval_config(config: LLMConfig, adapter: str | Path | None) -> LLMConfig:
    """The problem settings that make the search centre equal the model (+ adapter) exactly."""
    if adapter is None:
        return dataclasses.replace(config, init_adapter=None, init="random", space="lora")
    rank, modules = adapter_settings(adapter)
    return dataclasses.replace(
        config,
        init_adapter=str(adapter),
        rank=rank,
        target_modules=modules or config.target_modules,
        space="lora",
    )


def evaluate(
    problem_name: str,
    config: LLMConfig,
    *,
    adapter: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    offset: int = 0,
    out: Path | None = None,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    kl_to: str | Path | None = None,
    samples: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Greedy mean reward and accuracy (exact answers) of the model, or model + `adapter`, on a split.

    With `samples=k` (> 0), also k samples per item (`sample_settings`; item i's seeds depend on
    `seed` and its index in the split only), their records under `samples` and pass@1 and pass@k in
    the summary's `sampled` section.

    With `kl_to` (`BASE` or a PEFT adapter directory), also the KL from that reference model on the
    model's own answers (`gfo_llm.kl.answer_kl`): per answer in the records (`kl`), and summed up in
    the summary's `kl` section (mean per answer token, mean and median per answer).

    `adapter` defaults to `config.init_adapter`; `limit` keeps the split's first items after the
    first `offset` (fresh items past those a search's held-out evaluation used). Items are
    generated `chunk_size` at a time (default 4 x `config.row_budget`, 1 x for the hf engine). With
    `out`, writes `out/completions.jsonl` (one record per item: the exact prompt text after the
    chat template, completion, reward, tokens, whether it stopped before the cap, the example) and
    `out/eval.json` (the returned summary).
    """
    cls = _check(problem_name, limit, chunk_size, offset)
    if samples < 0:
        raise GfoError(f"--samples must be >= 0; got {samples}, use e.g. 4 (0: greedy only)")
    reference = baseline_adapter(kl_to) if kl_to is not None else None  # checked before any load
    if kl_to is not None and not records_token_ids(config):
        raise GfoError(
            f"--kl-to needs the answers' token ids, which backend={config.backend} engine={config.engine} "
            "does not record; use --set problem.backend=transformers --set problem.engine=continuous"
        )
    sampling = sample_settings(config, samples, seed) if samples else None
    summary, records = _evaluate(
        cls, problem_name, config, adapter, split, limit, chunk_size, progress, offset, sampling
    )
    if out is not None:  # the answers are kept before the KL's passes, which can fail (memory)
        write_results(out, summary, records)
    if kl_to is not None:
        summary["kl"] = add_kl(config, summary["adapter"], reference, records)
        if out is not None:
            write_results(out, summary, records)
    return summary


def records_token_ids(config: LLMConfig) -> bool:
    """Whether the engine of `config` records each answer's token ids (what the KL scores)."""
    return config.backend == "transformers" and config.engine == "continuous"


def compare(
    problem_name: str,
    config: LLMConfig,
    *,
    adapter: str | Path | None = None,
    baseline: str | Path = BASE,
    split: str = "test",
    limit: int | None = None,
    offset: int = 0,
    out: Path | None = None,
    chunk_size: int | None = None,
    progress: LabelledProgress | None = None,
) -> dict[str, Any]:
    """Evaluate A (`adapter`, as `evaluate` does) and B (`baseline`) on the same items and pair them.

    `baseline` is a PEFT adapter directory or `BASE` ("base"), the model without any adapter (not
    `config.init_adapter`). An item counts as correct when its reward is >= 1: the statistics are of
    exact answers, not of the mean reward. Returns A's `evaluate` summary with a `compare` section:
    `gfo.stats.paired_summary` of the two (accuracies, Wilson 95% intervals, items gained and lost,
    exact McNemar p-value) plus `correct_a`, `correct_b`, `adapter_a`, `adapter_b` and B's own
    summary as `eval_b`. With `out`, also writes `completions_b.jsonl` (B's records) and
    `compare.jsonl` (per item: index, reward and correctness of both, outcome).
    `progress(label, done, total, mean_reward)` is called with label "A", then "B".
    """
    from gfo.stats import paired_summary

    cls = _check(problem_name, limit, chunk_size, offset)
    # Both adapters are checked before the first model load, so a typo costs nothing.
    a_dir = adapter if adapter is not None else config.init_adapter
    if a_dir is not None:
        adapter_settings(a_dir)
    b_dir = baseline_adapter(baseline)

    def labelled(label: str) -> Progress | None:
        if progress is None:
            return None
        return lambda done, total, reward: progress(label, done, total, reward)

    started = time.perf_counter()
    summary, records = _evaluate(
        cls, problem_name, config, adapter, split, limit, chunk_size, labelled("A"), offset
    )
    base_config = dataclasses.replace(config, init_adapter=None)
    summary_b, records_b = _evaluate(
        cls, problem_name, base_config, b_dir, split, limit, chunk_size, labelled("B"), offset
    )
    if [(r["prompt"], r["example"]) for r in records] != [(r["prompt"], r["example"]) for r in records_b]:
        raise RuntimeError("gfo eval --compare scored A and B on different items; please report this")
    correct_a = [float(r["reward"]) >= 1.0 for r in records]
    correct_b = [float(r["reward"]) >= 1.0 for r in records_b]
    summary["compare"] = {
        "adapter_a": summary["adapter"],
        "adapter_b": summary_b["adapter"],
        "correct_when": "reward >= 1",
        "confidence": 0.95,
        **paired_summary(correct_a, correct_b),
        "correct_a": sum(correct_a),
        "correct_b": sum(correct_b),
        "eval_b": summary_b,
        "wall_s": round(time.perf_counter() - started, 3),
    }
    if out is not None:
        pairs = [
            {
                "index": r["index"],
                "reward_a": r["reward"],
                "reward_b": rb["reward"],
                "correct_a": a,
                "correct_b": b,
                "outcome": OUTCOMES[a, b],
            }
            for r, rb, a, b in zip(records, records_b, correct_a, correct_b, strict=True)
        ]
        write_results(out, summary, records, extra={COMPLETIONS_B: records_b, PAIRS: pairs})
    # KL(A||B) on A's answers, after the pairs are safe on disk; an engine without token ids has none.
    summary["kl"] = add_kl(config, summary["adapter"], b_dir, records) if records_token_ids(config) else None
    if out is not None and summary["kl"] is not None:
        write_results(out, summary, records, extra={COMPLETIONS_B: records_b, PAIRS: pairs})
    return summary


def sample_settings(config: LLMConfig, samples: int, seed: int) -> Sampling:
    """How `gfo eval --samples` samples: `problem.temperature`, else `SAMPLE_TEMPERATURE`; `problem.top_p`."""
    from gfo_llm.sampling import Sampling

    return Sampling(
        temperature=config.temperature or SAMPLE_TEMPERATURE, top_p=config.top_p, samples=samples, seed=seed
    )


def sampled_summary(sampling: Sampling, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """pass@1 and pass@k of the records' `samples` (correct: reward >= 1; a failed reward is wrong)."""
    from gfo.stats import pass_at_k

    k = sampling.samples
    rewards = [[float(s["reward"]) for s in r["samples"]] for r in records]
    correct = [sum(1 for x in row if x >= 1.0) for row in rewards]
    finite = [x for row in rewards for x in row if math.isfinite(x)]
    return {
        "k": k,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
        "pass_at_1": sum(c / k for c in correct) / len(records),
        "pass_at_k": sum(pass_at_k(k, c, k) for c in correct) / len(records),
        "mean_reward": sum(finite) / len(finite) if finite else math.nan,
        "correct_samples": sum(correct),
        "correct_when": "reward >= 1",
        "nonfinite_rewards": sum(len(row) for row in rewards) - len(finite),
        "generated_tokens": sum(int(s["tokens"]) for r in records for s in r["samples"]),
    }


def _sample(
    problem: LLMProblem, center: Any, examples: Sequence[Example], sampling: Sampling
) -> list[list[dict[str, Any]]]:
    """`sampling.samples` sampled answers of the centre to each of `examples` (their seeds set by the
    caller's `sampling.first_prompt`): per item, each sample's completion, reward, tokens and stop."""
    k = sampling.samples
    result = problem.engine.generate(
        center, problem.prompts(examples), problem.config.max_new_tokens, problem.task.stop, sampling
    )
    repeated = [ex for ex in examples for _ in range(k)]
    rewards = problem.rewards(result.completions[0], repeated, f"the samples of {len(examples)} item(s)")
    rows = zip(result.completions[0], rewards, result.num_tokens[0], result.finished[0], strict=True)
    flat = [{"completion": t, "reward": r, "tokens": n, "finished": f} for t, r, n, f in rows]
    return [flat[i * k : (i + 1) * k] for i in range(len(examples))]


def add_kl(
    config: LLMConfig, adapter: str | None, reference: str | None, records: list[dict[str, Any]]
) -> dict[str, Any]:
    """KL(model + `adapter` || model + `reference`) on each record's answer (its `token_ids`), written
    into the records as `kl`; returns the summary section."""
    from gfo_llm.kl import answer_kl
    from gfo_llm.model import load_model

    if any("token_ids" not in r for r in records):
        raise GfoError(
            "the KL needs the answers' token ids, which this engine does not record; use engine=continuous"
        )
    model, tokenizer = load_model(config.model, config.dtype, config.cache_dir, config.device)
    sums = answer_kl(
        model,
        tokenizer,
        adapter,
        reference,
        [r["prompt"] for r in records],
        [r["token_ids"] for r in records],
    )
    for record, value in zip(records, sums, strict=True):
        record["kl"] = value
    tokens = sum(len(r["token_ids"]) for r in records)
    return {
        "reference": reference or BASE,
        "per_token": sum(sums) / tokens,
        "per_answer_mean": sum(sums) / len(sums),
        "per_answer_median": statistics.median(sums),
        "answer_tokens": tokens,
    }


def baseline_adapter(baseline: str | Path) -> str | None:
    """The adapter directory named by `--compare` (checked), or None for the literal "base"."""
    if str(baseline) == BASE:
        return None
    path = Path(baseline).expanduser()
    if not path.exists():
        raise GfoError(
            f"--compare directory {str(baseline)!r} does not exist; pass a PEFT adapter directory "
            f"(e.g. RUN/adapter) or {BASE!r} for the model without an adapter"
        )
    adapter_settings(path)
    return str(path.resolve())


def _check(problem_name: str, limit: int | None, chunk_size: int | None, offset: int = 0) -> type[LLMProblem]:
    """The LLM problem class; the arguments checked before anything is loaded."""
    from gfo_llm.problem import LLMProblem

    cls = PROBLEMS.get(problem_name)
    if not (isinstance(cls, type) and issubclass(cls, LLMProblem)):
        raise GfoError(
            f"problem {problem_name!r} is not an LLM task; gfo eval takes e.g. gsm8k or arithmetic"
        )
    if limit is not None and limit < 1:
        raise GfoError(f"--limit must be >= 1; got {limit}, or leave it out to evaluate the whole split")
    if chunk_size is not None and chunk_size < 1:
        raise GfoError(f"chunk_size must be >= 1; got {chunk_size}")
    if offset < 0:
        raise GfoError(f"--offset must be >= 0; got {offset}, use 0 to start at the split's first item")
    return cls


def _evaluate(
    cls: type[LLMProblem],
    problem_name: str,
    config: LLMConfig,
    adapter: str | Path | None,
    split: str,
    limit: int | None,
    chunk_size: int | None,
    progress: Progress | None,
    offset: int = 0,
    sampling: Sampling | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary of `evaluate` and the per-item records, nothing written."""
    adapter = adapter if adapter is not None else config.init_adapter
    adapter = str(Path(adapter).expanduser().resolve()) if adapter is not None else None
    config = eval_config(config, adapter)

    started = time.perf_counter()
    problem = cls(config)
    problem.prepare()
    load_s = time.perf_counter() - started
    examples = list(problem.task.examples(split))[offset:][:limit]
    if not examples:
        raise GfoError(
            f"{problem.task.name} split {split!r} has no items after --offset {offset}; "
            "pick another --split or a smaller --offset"
        )
    center = problem.initial_center()[None]
    # The continuous engine refills freed rows from its queue: bigger chunks keep its batch full.
    chunk = chunk_size or _rows(config, problem) * (4 if config.engine == "continuous" else 1)
    records: list[dict[str, Any]] = []
    rewards = 0.0  # over the items whose reward is a number (a failed reward is NaN: see LLMProblem)
    scored = 0
    generate_started = time.perf_counter()
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        _, items = problem.score(center, part)
        if sampling is not None:  # seeds by the item's index in the split, not in the chunk
            drawn = _sample(problem, center, part, dataclasses.replace(sampling, first_prompt=offset + start))
            items = [{**item, "samples": s} for item, s in zip(items, drawn, strict=True)]
        for i, (item, example) in enumerate(zip(items, part, strict=True)):
            records.append({"index": offset + start + i, **item, "example": dict(example)})
            if math.isfinite(reward := float(item["reward"])):
                rewards, scored = rewards + reward, scored + 1
        if progress is not None:
            progress(len(records), len(examples), rewards / scored if scored else math.nan)
    generate_s = time.perf_counter() - generate_started

    tokens = sum(int(r["tokens"]) for r in records)
    all_tokens = tokens + sum(int(x["tokens"]) for r in records for x in r.get("samples", ()))
    correct = sum(1 for r in records if r["reward"] >= 1.0)
    summary: dict[str, Any] = {
        "problem": problem_name,
        "task": problem.task.name,
        "split": split,
        "offset": offset,
        "items": len(records),
        "mean_reward": rewards / scored if scored else math.nan,
        "accuracy": correct / len(records),
        "correct": correct,
        "correct_when": "reward >= 1",
        # items whose reward failed (raised, timed out, not a number): wrong, and not in mean_reward
        "nonfinite_rewards": len(records) - scored,
        "adapter": adapter,
        "adapter_rank": config.rank if adapter else None,
        "model": problem.model_id,
        "dtype": resolve_dtype(config.dtype, problem.device),
        "device": problem.device,
        "max_new_tokens": config.max_new_tokens,
        "system_prompt": config.system_prompt,
        "generated_tokens": tokens,
        # the samples' tokens too: they took part of generate_s
        "tokens_per_s": round(all_tokens / generate_s, 2) if generate_s > 0 else math.nan,
        "capped_fraction": sum(1 for r in records if not r["finished"]) / len(records),
        "load_s": round(load_s, 3),
        "wall_s": round(time.perf_counter() - started, 3),
    }
    if sampling is not None:
        summary["sampled"] = sampled_summary(sampling, records)
    problem.close()  # its model's memory is free before the next load (B, or the KL's)
    return summary, records


def _rows(config: LLMConfig, problem: LLMProblem) -> int:
    """The rows in flight that `config` asks for, or the most the device's engine would take."""
    from gfo_llm.batched import CPU_ROW_BUDGET, GPU_MAX_ROWS

    if config.row_budget is not None:
        return config.row_budget
    return GPU_MAX_ROWS if str(problem.device).startswith("cuda") else CPU_ROW_BUDGET


def write_results(
    out: Path,
    summary: dict[str, Any],
    records: list[dict[str, Any]],
    extra: dict[str, list[dict[str, Any]]] | None = None,
) -> None:
    """`out/completions.jsonl`, the `extra` JSON-lines files and `out/eval.json`, each atomically.

    Comparison files a previous `--compare` left in `out` and this call does not rewrite are
    removed, so the folder never pairs this evaluation with another one's B.
    """
    extra = extra or {}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GfoError(f"cannot create {out}: {exc.strerror}; pick another --out") from None
    for name, rows in {COMPLETIONS: records, **extra}.items():
        atomic_write(out / name, "".join(strictjson.dumps(r, default=str) + "\n" for r in rows).encode())
    for name in (COMPLETIONS_B, PAIRS):
        if name not in extra:
            (out / name).unlink(missing_ok=True)
    atomic_write(out / RESULT, (strictjson.dumps(summary, indent=2) + "\n").encode())
