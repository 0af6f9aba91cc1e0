"""Does one generation's ranking of candidates hold on other prompts? The split-half reliability of
ES's fitness at a start, spread and batch.

    python benchmarks/fitness_signal.py --problem arithmetic --set problem.init_adapter=DIR \\
        --set problem.stdev=0.1 --set problem.batch_size=32 --set problem.max_new_tokens=64 --json FILE

`--popsize` candidates are drawn around the start (the space's centre) at the problem's spread, as a
generation of diagonal CMA-ES or SNES draws them, and each is scored on two disjoint sets of
`problem.batch_size` training prompts, every candidate on the same prompts (as in a generation).
The Spearman correlation of the two scorings says how much of a generation's ranking is the
candidates' and how much the prompts': ES steps along the rank-weighted sum of the candidates'
offsets, and in a space of many dimensions the cosine between the steps that the two prompt sets
would take is that same rank correlation. Near 0, the step is fitted to the generation's prompts, and
a longer run at these settings does not carry to fresh ones.

Also reported: how many completions and rewards differ from the centre's (does the spread change
what the model writes?), and the fitness spread across candidates against the binomial spread of one
candidate's score. Run alone on the machine; it loads one model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gfo.errors import ConfigError, GfoError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--problem", default="arithmetic", help="an LLM problem (see `gfo list`)")
    p.add_argument("--popsize", type=int, default=24, help="candidates drawn around the start")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidates and of the prompt split")
    p.add_argument(
        "--set", action="append", default=[], help="problem.KEY=VALUE, as `gfo run` takes it (repeatable)"
    )
    p.add_argument("--json", type=Path, default=None, help="write the result here")
    args = p.parse_args(argv)
    if args.popsize < 3:
        p.error(f"--popsize must be at least 3 for a rank correlation; got {args.popsize}")
    return args


def build_problem(name: str, overrides: list[str]) -> Any:
    """The problem as `gfo eval` builds it from `--set` (`problem.` implied for keys without a section)."""
    from gfo.registry import PROBLEMS
    from gfo_llm.commands import _problem_settings

    overrides = [o if "." in o.partition("=")[0] else f"problem.{o}" for o in overrides]
    name, config = _problem_settings(name, None, overrides)
    return PROBLEMS.get(name)(config)


def score(
    problem: Any, vectors: torch.Tensor, examples: list[Any], seed: int = 0
) -> tuple[torch.Tensor, list[list[str]]]:
    """Rewards (candidates x answers) and answers of every row of `vectors` on `examples`: greedy,
    or, at `problem.temperature` > 0, `problem.samples_per_prompt` seeded samples per prompt (every
    candidate drawing the same random numbers, as in a generation of a search)."""
    from gfo.problem import Context

    c = problem.config
    sampling = problem.sampling(Context(generation=0, seed=seed))  # a search's first generation
    prompts = problem.prompts(examples)
    result = problem.engine.generate(vectors, prompts, c.max_new_tokens, problem.task.stop, sampling)
    shown = [ex for ex in examples for _ in range(sampling.samples if sampling else 1)]  # prompt-major
    rewards = [problem.rewards(texts, shown, f"candidate {i}") for i, texts in enumerate(result.completions)]
    return torch.tensor(rewards, dtype=torch.float64), result.completions


def likelihood(problem: Any, vectors: torch.Tensor, examples: list[Any]) -> torch.Tensor:
    """`problem.fitness=likelihood`'s fitness of every row of `vectors` on `examples`: the
    references' log-probability per token, pooled (what `LLMProblem` ranks a generation by)."""
    references = problem.references(examples)
    sums, tokens = problem.engine.log_likelihood(vectors, problem.prompts(examples), references)
    return sums.sum(dim=1) / tokens.sum()


def split_half(fitness_a: list[float], fitness_b: list[float]) -> tuple[float | None, float | None]:
    """Spearman's rho of two scorings of the same candidates and its two-sided p; None where one
    scoring ties every candidate (no ranking to compare)."""
    try:
        from scipy.stats import spearmanr
    except ImportError:
        raise GfoError("this benchmark needs scipy; pip install scipy") from None
    if len(set(fitness_a)) < 2 or len(set(fitness_b)) < 2:
        return None, None
    rho, p = spearmanr(fitness_a, fitness_b)
    return float(rho), float(p)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from gfo_llm.model import cpu_description

    args = parse_args(argv)
    load = os.getloadavg()[0]
    problem = build_problem(args.problem, args.set)
    problem.prepare()
    c = problem.config
    size = c.batch_size
    if 2 * size > len(problem.train):
        raise ConfigError(
            f"two sets of problem.batch_size={size} prompts need {2 * size} training items;"
            f" the train split has {len(problem.train)}, lower problem.batch_size"
        )
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(problem.train), generator=generator).tolist()
    sets = [[problem.train[i] for i in order[:size]], [problem.train[i] for i in order[size : 2 * size]]]
    center = problem.space.center()
    offsets = torch.randn(args.popsize, center.numel(), generator=generator, dtype=center.dtype) * c.stdev
    vectors = torch.cat([center.reshape(1, -1), center + offsets])  # row 0: the start itself
    started = time.perf_counter()
    answers = c.samples_per_prompt if c.temperature > 0 else 1  # per prompt
    rows = args.popsize * size * 2 * answers
    text_changed: float | None = None  # a likelihood generates no text
    reward_changed: float | None = None
    if c.fitness == "likelihood":
        fitness = [likelihood(problem, vectors, examples) for examples in sets]  # row 0 the centre's
    else:
        scored = [score(problem, vectors, examples, args.seed) for examples in sets]
        fitness = [rewards.mean(dim=1) for rewards, _ in scored]
        changed = sum(
            text != texts[0][i] for _, texts in scored for row in texts[1:] for i, text in enumerate(row)
        )
        text_changed = round(changed / rows, 4)
        reward_changed = round(sum(int((rewards[1:] != rewards[0]).sum()) for rewards, _ in scored) / rows, 4)
    wall = time.perf_counter() - started
    candidates = [f[1:].tolist() for f in fitness]
    rho, p = split_half(*candidates)
    mean = float(torch.cat([f[1:] for f in fitness]).mean())
    result = {
        "problem": args.problem,
        "settings": args.set,
        "space": c.space,
        "stdev": c.stdev,
        "popsize": args.popsize,
        "prompts_per_set": size,
        "temperature": c.temperature,
        "samples_per_prompt": answers,
        "seed": args.seed,
        "center_fitness": [float(f[0]) for f in fitness],
        "fitness": candidates,
        "spearman_rho": rho,
        "spearman_p": p,
        "fitness_kind": c.fitness,
        "text_changed": text_changed,
        "reward_changed": reward_changed,
        "fitness_sd": [float(f[1:].std()) for f in fitness],
        # one candidate's score on `size` x k answers, were its 0/1 rewards independent draws at the mean
        "binomial_sd": (mean * (1 - mean) / (size * answers)) ** 0.5
        if c.fitness == "reward" and 0 <= mean <= 1
        else None,
        "completions": rows + 2 * size * answers if c.fitness == "reward" else 0,
        "scored_references": 0 if c.fitness == "reward" else rows + 2 * size,
        "wall_s": round(wall, 1),
        "dtype": problem.dtype,
        "cpu": cpu_description(),
        "load_before": round(load, 2),
    }
    problem.close()
    show = "none (a set ties every candidate)" if rho is None else f"{rho:+.3f} (p = {p:.2g})"
    centre = result["center_fitness"]
    print(
        f"{args.problem} ({c.fitness}), {c.space} space, spread {c.stdev}: {args.popsize} candidates"
        f" x 2 sets of {size} prompts"
        + (f" x {answers} samples at temperature {c.temperature}" if c.temperature > 0 else " (greedy)")
        + f"; centre {centre[0]:.3f} / {centre[1]:.3f},"
        f" candidates' mean {mean:.3f}, sd {result['fitness_sd'][0]:.3f} / {result['fitness_sd'][1]:.3f}"
        f" (binomial {result['binomial_sd'] or float('nan'):.3f})",
        flush=True,
    )
    changes = (
        "references scored, nothing generated"
        if text_changed is None or reward_changed is None
        else f"completions that differ from the centre's {text_changed:.1%}, rewards {reward_changed:.1%}"
    )
    print(f"{changes}; split-half Spearman {show}; {wall:.0f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except GfoError as exc:  # bad input: one line and exit 2, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
