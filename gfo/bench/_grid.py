"""The grid of `gfo bench`: every algorithm x seed on one problem, planned and validated before any
run starts, then run in turn (resumably) in `OUT/<algo>/seed-<k>/`.

A run with `summary.json` is done and skipped (unless a signal stopped it: then its summary holds
the results so far), one with a checkpoint is continued.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gfo import checkpoint
from gfo.errors import ConfigError, GfoError
from gfo.loop import SIGNAL_REASONS, Callback, Interrupted, prepare_run_dir, run
from gfo.registry import ALGORITHMS, unknown_name
from gfo.spec import RunSpec, resolve


@dataclass(frozen=True)
class BenchRun:
    """One planned run of the grid."""

    algo: str
    seed: int
    spec: RunSpec
    run_dir: Path


def parse_algos(text: str) -> list[str]:
    """`"es, pgpe,cmaes"` -> names, each checked against the registry (one-line error on a bad one)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--algos is empty; give a comma-separated list, e.g. --algos es,pgpe,cmaes")
    known = ALGORITHMS.names()
    for name in names:
        if name not in known:
            raise GfoError(unknown_name("algorithm", name, known) + " in --algos")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--algos lists {', '.join(duplicates)} twice; give each algorithm once")
    return names


def plan(
    algos: Sequence[str],
    problem: str | None,
    *,
    seeds: int,
    out: Path,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    budget_evals: int | None = None,
    generations: int | None = None,
    force: bool = False,
) -> list[BenchRun]:
    """Resolve and validate every run before any of them starts.

    Seeds are `run.seed + k` for k < `seeds`. `budget_evals` stops each run at the first generation
    that reaches N evaluations (a run may overshoot by less than one population).
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1; got {seeds}, e.g. --seeds 5")
    if budget_evals is not None and generations is not None:
        raise ConfigError("give one budget: --budget-evals N or --generations G, not both")
    if budget_evals is not None and budget_evals < 1:
        raise ConfigError(f"--budget-evals must be >= 1; got {budget_evals}")
    if generations is not None and generations < 1:
        raise ConfigError(f"--generations must be >= 1; got {generations}")
    budget = []
    if budget_evals is not None:
        # Every population has >= 2 members, so N generations never bind before N evaluations.
        budget = [f"run.max_evaluations={budget_evals}", f"run.generations={budget_evals}"]
    elif generations is not None:
        budget = [f"run.generations={generations}"]
    runs = []
    for algo in algos:
        base = resolve(algo, problem, config_file=config_file, overrides=[*overrides, *budget])
        for k in range(seeds):
            seed = base.run.seed + k
            spec = resolve(
                algo, problem, config_file=config_file, overrides=[*overrides, *budget, f"run.seed={seed}"]
            )
            runs.append(BenchRun(algo, seed, spec, out / algo / f"seed-{seed}"))
    problems = {r.spec.problem_name for r in runs}
    if len(problems) != 1:
        raise ConfigError(f"a benchmark compares one problem; got {', '.join(sorted(problems))}")
    for r in runs:
        _check_run_dir(r, force)
    return runs


def _check_run_dir(r: BenchRun, force: bool) -> None:
    saved = r.run_dir / "config.toml"
    if force or not saved.exists():
        return
    if saved.read_text() != r.spec.to_toml():
        raise GfoError(
            f"{r.run_dir} holds a run with other settings (its config.toml differs); "
            "rerun with the same options, use another --out, or --force to start over"
        )


def run_all(
    runs: Sequence[BenchRun],
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
    callbacks: Callable[[RunSpec, Path], list[Callback]] | None = None,
) -> None:
    """Run every planned run in turn; a failure is recorded (`error.txt`) and the others go on.
    `callbacks(spec, run_dir)` adds loop callbacks to each run (experiment tracking)."""
    for i, r in enumerate(runs, 1):
        tag = f"[{i}/{len(runs)}] {r.algo} seed {r.seed}"
        error_file = r.run_dir / "error.txt"
        if not force and _finished(r.run_dir):
            log(f"{tag}: done before, skipped")
            continue
        resume = not force and checkpoint.exists(r.run_dir)
        try:
            prepare_run_dir(r.run_dir, resume=resume, force=not resume)
            error_file.unlink(missing_ok=True)
            extra = callbacks(r.spec, r.run_dir) if callbacks else None
            summary = run(r.spec, r.run_dir, resume=resume, callbacks=extra)
        except Interrupted:
            raise
        except Exception as exc:
            r.run_dir.mkdir(parents=True, exist_ok=True)
            error_file.write_text("".join(traceback.format_exception(exc)))
            log(f"{tag}: failed: {type(exc).__name__}: {exc}")
            continue
        how = "resumed, " if resume else ""
        log(f"{tag}: {how}best {summary['best']:.6g} after {summary['evaluations']} evaluations")


def _finished(run_dir: Path) -> bool:
    """A run that ended (a signal's stop also writes summary.json, with the results so far)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return summary.get("stop_reason") not in SIGNAL_REASONS


def budget_text(spec: RunSpec) -> str:
    if spec.run.max_evaluations is not None:
        return f"{spec.run.max_evaluations} evaluations"
    return f"{spec.run.generations} generations"
