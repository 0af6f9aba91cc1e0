"""The run loop: ask, evaluate, tell; log, checkpoint, resume. Algorithms never see any of this."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import signal
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil
import torch
from safetensors.torch import save as save_safetensors

from gfo import checkpoint, strictjson
from gfo.algorithms import Algorithm, SearchSpec
from gfo.config import plain_values
from gfo.errors import GfoError
from gfo.problem import Context, Evaluation, Problem, Sense, better
from gfo.registry import ALGORITHMS, PROBLEMS
from gfo.spec import RunSpec

RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json", checkpoint.NAME, checkpoint.PREVIOUS)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
#: What `gfo.tracking` and `gfo report` write into a run directory (cleared with it by --force).
TRACKED = ("tracking.json", "report.html")
TRACKED_DIRS = ("tb", "mlflow", "wandb", "report")
#: `stop_reason` of a run stopped by a first Ctrl-C or SIGTERM (a resumable stop, not an end).
SIGNAL_REASONS = frozenset(sig.name for sig in EXIT_CODES)
#: Keys of a metrics.jsonl line that differ between two runs of the same search: times and memory.
VOLATILE = frozenset({"wall_s", "eval_s", "rss_mb", "peak_rss_mb"})


class Interrupted(Exception):
    """Stopped by a signal at a safe point; the run directory holds a resumable checkpoint."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.exit_code = EXIT_CODES.get(signal.Signals(signum), 1)
        self.run_dir = run_dir


class Evaluator(Protocol):
    """Where populations are evaluated: in process, or on Ray actors (`gfo.parallel`)."""

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation: ...

    def evaluate_heldout(self, solutions: torch.Tensor) -> torch.Tensor: ...

    def close(self) -> None: ...


class LocalEvaluator:
    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        problem.prepare()

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        return self.problem.evaluate(population, context)

    def evaluate_heldout(self, solutions: torch.Tensor) -> torch.Tensor:
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
    # The last generation's best while its held-out scores are owed (its generation was no multiple
    # of eval_every and not the last): a run that stops there still scores it (`_score_owed`).
    last_candidate: torch.Tensor | None = None
    nonfinite: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    # Settings a resume changed: {"generation": first one run with it, "setting", "from", "to"}.
    changes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def prepare_run_dir(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse to mix runs: a directory holding another run needs --force (which clears it) or --resume."""
    if resume:
        if not (out / "config.toml").exists():
            raise GfoError(f"{out} holds no gfo run (no config.toml); check the path or start a new run")
        for stale in out.glob(".*.tmp*"):  # temporaries of `checkpoint.atomic_write` cut off by a kill
            stale.unlink(missing_ok=True)
        return
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not force:
        raise GfoError(
            f"{out} already holds a run ({', '.join(existing)}); use --resume {out} to continue it, "
            f"--force to overwrite it, or another --out"
        )
    if existing:
        for name in (*RUN_FILES, checkpoint.CORRUPT, "best.safetensors", "curve.png", "samples.jsonl"):
            (out / name).unlink(missing_ok=True)
        for name in TRACKED:
            (out / name).unlink(missing_ok=True)
        for sub in ("export", "adapter", *TRACKED_DIRS):
            shutil.rmtree(out / sub, ignore_errors=True)
    if out.exists() and not out.is_dir():
        raise GfoError(f"--out {out} is a file, not a directory; pick another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GfoError(f"cannot create run directory {out}: {exc.strerror}; pick another --out") from None


def run(
    spec: RunSpec,
    out: Path,
    *,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
    make_evaluator: Callable[[Problem, RunSpec], Evaluator] | None = None,
) -> dict[str, Any]:
    """Run (or continue) a search; returns the summary also written to `summary.json`.

    However the run ends (`run.generations`, `run.max_evaluations`, `run.target`, or a first
    SIGINT/SIGTERM), its last centre and best are scored on held-out data before the summary and
    the export are written. A signal then raises `Interrupted`, with the checkpoint saved.
    """
    callbacks = callbacks or []
    try:
        return _run(spec, out, resume, callbacks, make_evaluator)
    except BaseException as exc:
        for cb in callbacks:
            try:
                getattr(cb, "on_abort", lambda error: None)(exc)  # duck-typed callbacks may lack it
            except Exception as problem:  # the original error is the one to report
                warnings.warn(f"{type(cb).__name__}.on_abort failed: {problem}", stacklevel=2)
        raise


def _run(
    spec: RunSpec,
    out: Path,
    resume: bool,
    callbacks: list[Callback],
    make_evaluator: Callable[[Problem, RunSpec], Evaluator] | None,
) -> dict[str, Any]:
    problem: Problem = PROBLEMS.get(spec.problem_name)(spec.problem)
    algorithm_class = ALGORITHMS.get(spec.algorithm)
    saved = checkpoint.load(out) if resume and checkpoint.exists(out) else None
    if saved:
        _check_fingerprint(out, saved["fingerprint"], _fingerprint(spec, problem, algorithm_class))
    stop = _SignalStop()
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
                changed = _changed_settings(saved.get("settings"), _settings(spec))
                state.changes += [
                    {"generation": state.generation, "setting": k, "from": a, "to": b}
                    for k, (a, b) in changed.items()
                ]
            start = state.generation
            _truncate_metrics(out / "metrics.jsonl", state.generation)
            # Only now: a problem that fails to prepare (a wrong model path) leaves no run behind that
            # a corrected command would then refuse to overwrite.
            checkpoint.atomic_write(out / "config.toml", spec.to_toml().encode())
            for cb in callbacks:
                cb.on_start(spec, problem, algorithm, state.generation)
            reason = _loop(spec, problem, algorithm, evaluator, state, out, callbacks, stop, changed)
            if reason in SIGNAL_REASONS and state.generation == start:
                # Stopped before a generation of its own: nothing changed, the files stay as they are.
                raise Interrupted(stop.signum or signal.SIGINT, out)
            final, heldout_final = _score_owed(state, algorithm, evaluator, problem.sense)
        finally:
            evaluator.close()
        summary = _finish(spec, problem, final, out, reason, heldout_final)
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


def _fingerprint(spec: RunSpec, problem: Problem, algorithm_class: type[Algorithm]) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed: the problem's structure and `state_settings`
    (`Problem.fingerprint`), the algorithm's `state_settings`, and the seed (the algorithm's random
    generator is in the checkpoint, while mini-batches are drawn from the seed: a new one would be
    half applied)."""
    algo = plain_values(spec.algo)
    return {
        "problem": spec.problem_name,
        "algorithm": spec.algorithm,
        **problem.fingerprint(),
        "run.seed": spec.run.seed,
        **{f"algo.{key}": algo[key] for key in algorithm_class.state_settings},
    }


def _check_fingerprint(out: Path, was: dict[str, Any], now: dict[str, Any]) -> None:
    # A key the checkpoint lacks predates the code that records it: it cannot be checked.
    changed = [k for k in sorted(set(was) | set(now)) if k in was and was[k] != now.get(k)]
    structure = [k for k in changed if "." not in k]
    if structure:
        detail = ", ".join(f"{k} {was.get(k)!r} -> {now.get(k)!r}" for k in structure)
        raise GfoError(
            f"{out} holds a run of another problem or algorithm ({detail}); resume it without the "
            "--algo/--problem/--set that change these, or start a new --out"
        )
    if changed:
        one = len(changed) == 1
        raise GfoError(
            f"{out} was started with {', '.join(f'{k}={_show(was[k])}' for k in changed)}; a resume "
            f"cannot change {'it' if one else 'them'} to {', '.join(_show(now.get(k)) for k in changed)} "
            "(the checkpoint holds the state it set up); resume without that change, or start a new --out"
        )


def _show(value: Any) -> str:
    """A setting as `--set` spells it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _settings(spec: RunSpec) -> dict[str, Any]:
    """`algo.*` and `problem.*` as plain values; the checkpoint keeps them to tell what a resume changed."""
    return {
        **{f"algo.{k}": v for k, v in plain_values(spec.algo).items()},
        **{f"problem.{k}": v for k, v in plain_values(spec.problem).items()},
    }


def _changed_settings(was: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Settings a resume changes (none of them a fingerprint key, which `_check_fingerprint` refused):
    they take effect from the resumed generation on, recorded in metrics.jsonl (`changed`) and
    summary.json (`changes`)."""
    if not was:  # a checkpoint older than this record
        return {}
    return {k: (was[k], v) for k, v in now.items() if k in was and was[k] != v}


def _end_reason(run_cfg: Any, generation: int, evaluations: int, best: float, sense: Sense) -> str | None:
    """Why the run ends after `generation` generations, if it does."""
    if generation >= run_cfg.generations:
        return "generations"
    if run_cfg.max_evaluations is not None and evaluations >= run_cfg.max_evaluations:
        return "max_evaluations"
    if run_cfg.target is not None and not math.isnan(best) and not better(run_cfg.target, best, sense):
        return "target"
    return None


def _loop(
    spec: RunSpec,
    problem: Problem,
    algorithm: Algorithm,
    evaluator: Evaluator,
    state: _State,
    out: Path,
    callbacks: list[Callback],
    stop: _SignalStop,
    changed: dict[str, tuple[Any, Any]],
) -> str:
    """Generations until the run ends or a signal asks it to stop; returns the reason."""
    sense = problem.sense
    every = problem.heldout_every()
    run_cfg = spec.run
    while True:
        reason = _end_reason(run_cfg, state.generation, state.evaluations, state.best, sense)
        if reason is not None:
            return reason
        if stop.signum is not None:
            return signal.Signals(stop.signum).name
        started = time.perf_counter()
        g = state.generation
        initial: dict[str, float] = {}
        if every and g == 0 and math.isnan(state.heldout_initial):
            # "Before": the starting point on held-out data, itself a candidate for the kept solution.
            center = algorithm.center()
            state.heldout_initial = float(evaluator.evaluate_heldout(center[None])[0])
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
            scores = evaluator.evaluate_heldout(candidates).tolist()
            record["heldout"] = {"center": scores[0], "best": scores[1]}
            _keep_heldout(state, scores, candidates, g, sense)
            state.last_candidate = None
        elif every:
            state.last_candidate = population[idx].clone()
        state.generation = g + 1
        state.wall_s += time.perf_counter() - started
        record["wall_s"] = round(state.wall_s, 3)
        record.update(_memory_mb())
        if result.samples:
            _append_jsonl(out / "samples.jsonl", [{"generation": g, **s} for s in result.samples])
        _append_jsonl(out / "metrics.jsonl", [record])
        checkpoint.save(
            out,
            {
                "algorithm": algorithm.state_dict(),
                "loop": state.to_dict(),
                "fingerprint": _fingerprint(spec, problem, type(algorithm)),
                "settings": _settings(spec),
            },
        )
        for cb in callbacks:
            cb.on_generation(record)


def _keep_heldout(
    state: _State, scores: list[float], candidates: torch.Tensor, generation: int, sense: Sense
) -> None:
    for score, solution in zip(scores, candidates, strict=True):
        if math.isnan(state.heldout_best) or better(score, state.heldout_best, sense):
            state.heldout_best, state.heldout_solution = score, solution.clone()
            state.heldout_generation = generation


def _score_owed(
    state: _State, algorithm: Algorithm, evaluator: Evaluator, sense: Sense
) -> tuple[_State, dict[str, Any] | None]:
    """The last generation's centre and best on held-out data, if no held-out evaluation followed it
    (a run stopped by a signal between two `eval_every`s): for the summary and the export only. The
    checkpoint keeps the state without them, so a resume continues as if the run was never stopped."""
    if state.last_candidate is None:
        return state, None
    final = dataclasses.replace(state)
    generation = state.generation - 1
    candidates = torch.stack([algorithm.center(), state.last_candidate])
    scores = evaluator.evaluate_heldout(candidates).tolist()
    _keep_heldout(final, scores, candidates, generation, sense)
    return final, {"generation": generation, "center": scores[0], "best": scores[1]}


def _memory_mb() -> dict[str, float]:
    """Resident memory now (`rss_mb`) and the process's peak so far (`peak_rss_mb`), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024
    rss_mb = psutil.Process().memory_info().rss / 2**20
    return {"rss_mb": round(rss_mb, 1), "peak_rss_mb": round(max(peak_mb, rss_mb), 1)}  # ru_maxrss may lag


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


def _finish(
    spec: RunSpec,
    problem: Problem,
    state: _State,
    out: Path,
    reason: str,
    heldout_final: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """best.safetensors, the export, summary.json and curve.png: at the end, and at a signal's stop."""
    # With held-out scores, the best on held-out data is kept (ESSA's "keep the best on validation");
    # otherwise the best candidate ever evaluated.
    use_heldout = state.heldout_solution is not None
    final = state.heldout_solution if use_heldout else state.best_solution
    tensors = {"best": state.best_solution, "selected": final}
    blob = save_safetensors({k: v.float().clone() for k, v in tensors.items() if v is not None})
    checkpoint.atomic_write(out / "best.safetensors", blob)
    exported = problem.export(final, out) if final is not None else None
    summary = {
        "algorithm": spec.algorithm,
        "problem": spec.problem_name,
        "sense": problem.sense,
        "best": state.best,
        "evaluations": state.evaluations,
        "generations": state.generation,
        "wall_s": round(state.wall_s, 3),
        "stop_reason": reason,
        "best_solution": "best.safetensors:best",
        "selected_solution": "best.safetensors:selected",
        "selected_by": "heldout" if use_heldout else "best_so_far",
        "heldout_initial": None if math.isnan(state.heldout_initial) else state.heldout_initial,
        "heldout_best": None if not use_heldout else state.heldout_best,
        "heldout_generation": None if not use_heldout else state.heldout_generation,
        # scores of the last generation not in metrics.jsonl (a stop between two held-out evaluations)
        "heldout_final": heldout_final,
        "nonfinite": state.nonfinite,
        "counters": state.counters,
        "changes": state.changes,
        "exported": str(exported.relative_to(out)) if exported else None,
        "peak_rss_mb": _memory_mb()["peak_rss_mb"],
        **problem.describe(),
    }
    checkpoint.atomic_write(out / "summary.json", (strictjson.dumps(summary, indent=2) + "\n").encode())
    try:
        from gfo.plots import plot_run

        plot_run(out)
    except Exception as exc:  # a plot must never cost the results
        warnings.warn(f"curve.png not written: {exc}", stacklevel=2)
    return summary


def _append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("a") as fh:
        for r in records:
            fh.write(strictjson.dumps(r) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _truncate_metrics(path: Path, generation: int) -> None:
    """Drop lines of generations the checkpoint does not cover (written just before a crash)."""
    for file in (path, path.with_name("samples.jsonl")):
        if not file.exists():
            continue
        kept = []
        for line in file.read_text().splitlines():
            try:
                if json.loads(line)["generation"] < generation:
                    kept.append(line)
            except (ValueError, KeyError):
                continue  # a torn last line
        checkpoint.atomic_write(file, "".join(f"{line}\n" for line in kept).encode())


class _SignalStop:
    """First SIGINT/SIGTERM: stop at the next safe point. Second: exit now (checkpoints are atomic)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalStop:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            os._exit(EXIT_CODES.get(signal.Signals(signum), 1))
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name} received: stopping after this generation (again to quit now)",
            flush=True,
        )

    def check(self, out: Path) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum, out)
