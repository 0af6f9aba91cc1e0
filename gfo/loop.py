"""The run loop: ask, evaluate, tell; log, checkpoint, resume. Algorithms never see any of this."""

from __future__ import annotations

import dataclasses
import math
import signal
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from gfo import checkpoint
from gfo.algorithms import Algorithm, SearchSpec
from gfo.errors import GfoError
from gfo.problem import Context, Evaluation, Problem, Sense, better
from gfo.registry import ALGORITHMS, PROBLEMS
from gfo.rundir import (
    append_jsonl,
    changed_settings,
    check_fingerprint,
    memory_mb,
    prepare_run_dir,
    run_fingerprint,
    run_settings,
    truncate_metrics,
    write_config,
    write_results,
)
from gfo.spec import RunSpec
from gfo.stops import SIGNAL_REASONS, Interrupted, SignalStop

# The run directory (`gfo.rundir`) and signal handling (`gfo.stops`) live apart; their names that
# callers have always imported from here stay importable from here.
__all__ = [
    "SIGNAL_REASONS",
    "VOLATILE",
    "Callback",
    "Evaluator",
    "Interrupted",
    "LocalEvaluator",
    "prepare_run_dir",
    "run",
]

#: Keys of a metrics.jsonl line that differ between two runs of the same search: times and memory.
VOLATILE = frozenset({"wall_s", "eval_s", "rss_mb", "peak_rss_mb", "gpu_mb", "peak_gpu_mb"})


class Evaluator(Protocol):
    """Where populations are evaluated: in process, or on Ray actors (`gfo.parallel`)."""

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation: ...

    def evaluate_heldout(self, solutions: torch.Tensor) -> torch.Tensor | Evaluation: ...

    def close(self) -> None: ...


class LocalEvaluator:
    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        problem.prepare()

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        return self.problem.evaluate(population, context)

    def evaluate_heldout(self, solutions: torch.Tensor) -> torch.Tensor | Evaluation:
        return self.problem.evaluate_heldout(solutions)

    def close(self) -> None:
        pass


@dataclass
class Callback:
    """Hooks into the loop (progress display, Optuna pruning, ...); raise to stop the run."""

    def on_start(self, spec: RunSpec, problem: Problem, algorithm: Algorithm, start_generation: int) -> None:
        pass

    def on_generation(self, record: dict[str, Any]) -> None:
        pass

    def on_end(self, summary: dict[str, Any]) -> None:
        pass

    def on_abort(self, error: BaseException) -> None:
        """The run stopped without `on_end` (a signal, a pruned trial, an error; `error` says which):
        release what `on_start` opened. Called even if `on_start` was not reached."""


@dataclass
class _State:
    """Loop counters; everything here goes into the checkpoint."""

    generation: int = 0
    evaluations: int = 0
    wall_s: float = 0.0
    best: float = math.nan
    best_solution: torch.Tensor | None = None
    heldout_best: float = math.nan
    heldout_solution: torch.Tensor | None = None
    heldout_generation: int = -1  # -1 with a heldout_best: the initial centre
    heldout_initial: float = math.nan  # the initial centre's held-out score, before generation 0
    # The problem's own numbers about the centre at the last held-out evaluation (`heldout_<name>`,
    # e.g. an LLM's KL to its start): summary.json holds the last ones.
    heldout_metrics: dict[str, float] = field(default_factory=dict)
    # The last generation's best while its held-out scores are owed (its generation was no multiple
    # of eval_every and not the last): a run that stops there still scores it (`_score_owed`).
    last_candidate: torch.Tensor | None = None
    nonfinite: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    # Settings a resume changed: {"generation": first one run with it, "setting", "from", "to"}.
    changes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run(
    spec: RunSpec,
    out: Path,
    *,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
    make_evaluator: Callable[[Problem, RunSpec], Evaluator] | None = None,
    problem: Problem | None = None,
) -> dict[str, Any]:
    """Run (or continue) a search; returns the summary also written to `summary.json`.

    The problem is `problem`, an instance built by the caller (`gfo.search`), or else the registered
    `spec.problem_name` built from `spec.problem`. However the run ends (`run.generations`,
    `run.max_evaluations`, `run.target`, or a first SIGINT/SIGTERM), its last centre and best are
    scored on held-out data before the summary and the export are written. A signal then raises
    `Interrupted`, with the checkpoint saved.
    """
    callbacks = callbacks or []
    try:
        problem = problem if problem is not None else PROBLEMS.get(spec.problem_name)(spec.problem)
        try:
            return _run_problem(spec, problem, out, resume, callbacks, make_evaluator)
        finally:
            problem.close()  # the model and its engine, however the run ended
    except BaseException as exc:
        for cb in callbacks:
            try:
                getattr(cb, "on_abort", lambda error: None)(exc)  # duck-typed callbacks may lack it
            except Exception as failure:  # the original error is the one to report
                warnings.warn(f"{type(cb).__name__}.on_abort failed: {failure}", stacklevel=2)
        raise


@dataclass
class _Run:
    """The parts of one run that `_loop` drives, built once by `_run_problem`."""

    spec: RunSpec
    problem: Problem
    algorithm: Algorithm
    evaluator: Evaluator
    state: _State
    out: Path
    callbacks: list[Callback]
    stop: SignalStop

    def save_checkpoint(self) -> None:
        checkpoint.save(
            self.out,
            {
                "algorithm": self.algorithm.state_dict(),
                "loop": self.state.to_dict(),
                "fingerprint": run_fingerprint(self.spec, self.problem, type(self.algorithm)),
                "settings": run_settings(self.spec),
            },
        )


def _run_problem(
    spec: RunSpec,
    problem: Problem,
    out: Path,
    resume: bool,
    callbacks: list[Callback],
    make_evaluator: Callable[[Problem, RunSpec], Evaluator] | None,
) -> dict[str, Any]:
    algorithm_class = ALGORITHMS.get(spec.algorithm)
    saved = checkpoint.load(out) if resume and checkpoint.exists(out) else None
    if saved:
        check_fingerprint(out, saved["fingerprint"], run_fingerprint(spec, problem, algorithm_class))
    stop = SignalStop()
    with stop:
        # The evaluator prepares the problem (loads a model) before the search space is asked for.
        evaluator = (make_evaluator or _default_evaluator)(problem, spec)
        try:
            center = problem.initial_center()
            search = SearchSpec(
                problem.sense, problem.solution_length, center, problem.initial_stdev, problem.default_popsize
            )
            algorithm: Algorithm = algorithm_class(spec.algo, search, spec.run.seed)
            state = _State()
            changed: dict[str, tuple[Any, Any]] = {}
            if saved:
                algorithm.load_state_dict(saved["algorithm"])
                state = _State(**saved["loop"])
                changed = changed_settings(saved.get("settings"), run_settings(spec))
                state.changes += [
                    {"generation": state.generation, "setting": k, "from": a, "to": b}
                    for k, (a, b) in changed.items()
                ]
            start = state.generation
            truncate_metrics(out / "metrics.jsonl", state.generation)
            # Only now: a problem that fails to prepare (a wrong model path) leaves no run behind that
            # a corrected command would then refuse to overwrite.
            write_config(out, spec)
            for cb in callbacks:
                cb.on_start(spec, problem, algorithm, state.generation)
            current = _Run(spec, problem, algorithm, evaluator, state, out, callbacks, stop)
            reason = _loop(current, changed)
            if reason in SIGNAL_REASONS and state.generation == start:
                # Stopped before a generation of its own: nothing changed, the files stay as they are.
                raise Interrupted(stop.signum or signal.SIGINT, out)
            final, heldout_final = _score_owed(current)
            center = algorithm.center()
        finally:
            evaluator.close()
        summary = write_results(spec, problem, final, out, reason, heldout_final, center)
    if reason in SIGNAL_REASONS:
        raise Interrupted(stop.signum or signal.SIGINT, out)
    for cb in callbacks:
        cb.on_end(summary)
    return summary


def _default_evaluator(problem: Problem, spec: RunSpec) -> Evaluator:
    if spec.run.actors > 0:
        from gfo.parallel import RayEvaluator

        return RayEvaluator(problem, spec)
    if spec.run.ray_address or spec.run.gpus_per_actor > 0:
        raise GfoError("--ray-address and --gpus-per-actor take effect with Ray actors only; add --actors N")
    return LocalEvaluator(problem)


def _end_reason(run_cfg: Any, generation: int, evaluations: int, best: float, sense: Sense) -> str | None:
    """Why the run ends after `generation` generations, if it does."""
    if generation >= run_cfg.generations:
        return "generations"
    if run_cfg.max_evaluations is not None and evaluations >= run_cfg.max_evaluations:
        return "max_evaluations"
    if run_cfg.target is not None and not math.isnan(best) and not better(run_cfg.target, best, sense):
        return "target"
    return None


def _loop(current: _Run, changed: dict[str, tuple[Any, Any]]) -> str:
    """Generations until the run ends or a signal asks it to stop; returns the reason.

    `changed`: the settings a resume changed, recorded in the first generation run with them."""
    algorithm, evaluator, state = current.algorithm, current.evaluator, current.state
    sense = current.problem.sense
    every = current.problem.heldout_every()
    run_cfg = current.spec.run
    while True:
        reason = _end_reason(run_cfg, state.generation, state.evaluations, state.best, sense)
        if reason is not None:
            return reason
        if current.stop.signum is not None:
            return signal.Signals(current.stop.signum).name
        started = time.perf_counter()
        g = state.generation
        initial: dict[str, float] = {}
        if every and g == 0 and math.isnan(state.heldout_initial):
            # "Before": the starting point on held-out data, itself a candidate for the kept solution.
            center = algorithm.center()
            state.heldout_initial = _heldout(evaluator, center[None])[0][0]
            state.heldout_best, state.heldout_solution = state.heldout_initial, center.clone()
            initial = {"heldout_initial": state.heldout_initial}
        population = algorithm.ask()
        result = evaluator.evaluate(population, Context(generation=g, seed=run_cfg.seed))
        eval_s = time.perf_counter() - started
        raw = result.fitness.detach().to(torch.float64).reshape(-1)
        fitness = _sanitize(raw, sense, state, g)
        steps = algorithm.tell(population, fitness)

        idx = int(fitness.argmin() if sense == "min" else fitness.argmax())
        # Sanitized values rank below every finite one, so idx is finite unless all were non-finite:
        # then nothing was learned and a placeholder value must not become the best-so-far. The
        # statistics are over the finite values only, with their count.
        finite = raw[torch.isfinite(raw)].tolist()
        if finite and (math.isnan(state.best) or better(float(raw[idx]), state.best, sense)):
            state.best, state.best_solution = float(raw[idx]), population[idx].clone()
        state.evaluations += len(population)
        record: dict[str, Any] = {
            "generation": g,
            "evaluations": state.evaluations,
            "wall_s": 0.0,
            "eval_s": round(eval_s, 4),
            "best": float(raw[idx]) if finite else math.nan,
            "mean": statistics.fmean(finite) if finite else math.nan,
            "median": statistics.median(finite) if finite else math.nan,
            "worst": (max(finite) if sense == "min" else min(finite)) if finite else math.nan,
            "finite": len(finite),
            "nonfinite": len(raw) - len(finite),
            "best_so_far": state.best,
            **steps,
            **initial,
        }
        for key, tensor in result.info.items():
            record[key] = float(tensor.double().mean())
        for key, value in result.counters.items():
            state.counters[key] = state.counters.get(key, 0.0) + value
            record[key] = value
            record[f"{key}_per_s"] = value / eval_s if eval_s > 0 else 0.0
            record[f"{key}_total"] = state.counters[key]
        if state.nonfinite:
            record["nonfinite_total"] = state.nonfinite
        if changed:  # the first generation run with settings a resume changed
            record["changed"] = {k: [a, b] for k, (a, b) in changed.items()}
            changed = {}
        ending = _end_reason(run_cfg, g + 1, state.evaluations, state.best, sense)
        if every and ((g + 1) % every == 0 or ending is not None):
            candidates = torch.stack([algorithm.center(), population[idx]])
            scores, metrics = _heldout(evaluator, candidates)
            record["heldout"] = {"center": scores[0], "best": scores[1]}
            record.update(metrics)
            state.heldout_metrics = metrics
            _keep_heldout(state, scores, candidates, g, sense)
            state.last_candidate = None
        elif every:
            state.last_candidate = population[idx].clone()
        state.generation = g + 1
        state.wall_s += time.perf_counter() - started
        record["wall_s"] = round(state.wall_s, 3)
        record.update(memory_mb())
        if result.samples:
            append_jsonl(current.out / "samples.jsonl", [{"generation": g, **s} for s in result.samples])
        append_jsonl(current.out / "metrics.jsonl", [record])
        current.save_checkpoint()
        for cb in current.callbacks:
            cb.on_generation(record)


def _heldout(evaluator: Evaluator, candidates: torch.Tensor) -> tuple[list[float], dict[str, float]]:
    """The held-out scores of `candidates`, and the problem's numbers about the first (the centre)
    as `heldout_<name>` (a problem that returns an `Evaluation` with `info`)."""
    result = evaluator.evaluate_heldout(candidates)
    if not isinstance(result, Evaluation):
        return torch.as_tensor(result).tolist(), {}
    metrics = {f"heldout_{k}": float(v.double().reshape(-1)[0]) for k, v in result.info.items()}
    return result.fitness.tolist(), metrics


def _keep_heldout(
    state: _State, scores: list[float], candidates: torch.Tensor, generation: int, sense: Sense
) -> None:
    for score, solution in zip(scores, candidates, strict=True):
        if math.isnan(state.heldout_best) or better(score, state.heldout_best, sense):
            state.heldout_best, state.heldout_solution = score, solution.clone()
            state.heldout_generation = generation


def _score_owed(current: _Run) -> tuple[_State, dict[str, Any] | None]:
    """The last generation's centre and best on held-out data, if no held-out evaluation followed it
    (a run stopped by a signal between two `eval_every`s): for the summary and the export only. The
    checkpoint keeps the state without them, so a resume continues as if the run was never stopped."""
    state = current.state
    if state.last_candidate is None:
        return state, None
    final = dataclasses.replace(state)
    generation = state.generation - 1
    candidates = torch.stack([current.algorithm.center(), state.last_candidate])
    scores, metrics = _heldout(current.evaluator, candidates)
    final.heldout_metrics = metrics
    _keep_heldout(final, scores, candidates, generation, current.problem.sense)
    return final, {"generation": generation, "center": scores[0], "best": scores[1]}


def _sanitize(fitness: torch.Tensor, sense: str, state: _State, generation: int) -> torch.Tensor:
    """NaN / inf become strictly worse than the worst finite value, so they never steer the search."""
    fitness = fitness.detach().to(torch.float64).reshape(-1).clone()  # the caller keeps the raw values
    bad = ~torch.isfinite(fitness)
    if not bad.any():
        return fitness
    count = int(bad.sum())
    state.nonfinite += count
    warnings.warn(
        f"generation {generation}: {count} non-finite fitness value(s) treated as the worst "
        f"({state.nonfinite} so far)",
        stacklevel=2,
    )
    finite = fitness[~bad]
    if len(finite) == 0:
        return torch.zeros_like(fitness)
    worst_finite = float(finite.max() if sense == "min" else finite.min())
    margin = abs(worst_finite) + 1.0
    fitness[bad] = worst_finite + margin if sense == "min" else worst_finite - margin
    return fitness
