"""The run directory: refusing to mix runs (--force, --resume), what a checkpoint must agree with to
be resumed, and the files the loop writes there (metrics.jsonl, samples.jsonl, summary.json,
best.safetensors, the export, curve.png)."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import torch
from safetensors.torch import save as save_safetensors

from gfo import checkpoint, strictjson
from gfo.algorithms import Algorithm
from gfo.config import plain_values
from gfo.errors import GfoError
from gfo.problem import Problem
from gfo.spec import RunSpec

if TYPE_CHECKING:
    from gfo.loop import _State

RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json", checkpoint.NAME, checkpoint.PREVIOUS)
#: What `gfo.tracking` and `gfo report` write into a run directory (cleared with it by --force).
TRACKED = ("tracking.json", "report.html")
TRACKED_DIRS = ("tb", "mlflow", "wandb", "report")
#: Every file the loop, the trackers and the report write into a run directory.
OWN_FILES = (*RUN_FILES, checkpoint.CORRUPT, "best.safetensors", "curve.png", "samples.jsonl", *TRACKED)


def prepare_run_dir(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse to mix runs: a directory holding another run needs --force or --resume. --force removes
    gfo's files (`OWN_FILES`, `TRACKED_DIRS`) and what the old run exported; nothing else."""
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
        exported = _exported(out)  # read before summary.json goes
        if exported is not None:
            _remove(exported)
        for name in OWN_FILES:
            (out / name).unlink(missing_ok=True)
        for sub in TRACKED_DIRS:
            shutil.rmtree(out / sub, ignore_errors=True)
    if out.exists() and not out.is_dir():
        raise GfoError(f"--out {out} is a file, not a directory; pick another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GfoError(f"cannot create run directory {out}: {exc.strerror}; pick another --out") from None


def _exported(out: Path) -> Path | None:
    """What the run in `out` exported (`Problem.export`), as its summary.json records it, if that lies
    inside `out`. Only `write_results` exports, and it writes summary.json right after: a run stopped
    without one (killed, or failed) exported nothing, unless it was killed in between."""
    try:
        relative = json.loads((out / "summary.json").read_text()).get("exported")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(relative, str) or not relative:
        return None
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts or path == Path("."):
        return None  # not written by `write_results`: never delete outside the run directory
    target = out / path
    return target if target.parent.resolve().is_relative_to(out.resolve()) else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_config(out: Path, spec: RunSpec) -> None:
    """`config.toml`: the run's settings, which `--resume` reads back and `prepare_run_dir` looks for."""
    checkpoint.atomic_write(out / "config.toml", spec.to_toml().encode())


def run_fingerprint(spec: RunSpec, problem: Problem, algorithm_class: type[Algorithm]) -> dict[str, Any]:
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


def check_fingerprint(out: Path, was: dict[str, Any], now: dict[str, Any]) -> None:
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


def run_settings(spec: RunSpec) -> dict[str, Any]:
    """`algo.*` and `problem.*` as plain values; the checkpoint keeps them to tell what a resume changed."""
    return {
        **{f"algo.{k}": v for k, v in plain_values(spec.algo).items()},
        **{f"problem.{k}": v for k, v in plain_values(spec.problem).items()},
    }


def changed_settings(was: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Settings a resume changes (none of them a fingerprint key, which `check_fingerprint` refused):
    they take effect from the resumed generation on, recorded in metrics.jsonl (`changed`) and
    summary.json (`changes`)."""
    if not was:  # a checkpoint older than this record
        return {}
    return {k: (was[k], v) for k, v in now.items() if k in was and was[k] != v}


def write_results(
    spec: RunSpec,
    problem: Problem,
    state: _State,
    out: Path,
    reason: str,
    heldout_final: dict[str, Any] | None = None,
    center: torch.Tensor | None = None,
) -> dict[str, Any]:
    """best.safetensors, the export, summary.json and curve.png: at the end, and at a signal's stop.

    `run.select=heldout`: with held-out scores, the best on held-out data is kept (ESSA's "keep the
    best on validation"); otherwise the best candidate ever evaluated. `run.select=center`: the
    search's final centre, `center` (a small selection set picks noise: docs/lab/learning.md)."""
    use_heldout = state.heldout_solution is not None
    final = state.heldout_solution if use_heldout else state.best_solution
    selected_by = "heldout" if use_heldout else "best_so_far"
    if spec.run.select == "center" and center is not None:
        final, selected_by = center, "center"
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
        "selected_by": selected_by,
        "heldout_initial": None if math.isnan(state.heldout_initial) else state.heldout_initial,
        "heldout_best": None if not use_heldout else state.heldout_best,
        "heldout_generation": None if not use_heldout else state.heldout_generation,
        # scores of the last generation not in metrics.jsonl (a stop between two held-out evaluations)
        "heldout_final": heldout_final,
        **state.heldout_metrics,  # the problem's numbers about the centre at the last held-out evaluation
        "nonfinite": state.nonfinite,
        "counters": state.counters,
        "changes": state.changes,
        "exported": str(exported.relative_to(out)) if exported else None,
        **{k: v for k, v in memory_mb().items() if k.startswith("peak_")},
        **problem.describe(),
    }
    checkpoint.atomic_write(out / "summary.json", (strictjson.dumps(summary, indent=2) + "\n").encode())
    try:
        from gfo.plots import plot_run

        plot_run(out)
    except Exception as exc:  # a plot must never cost the results
        warnings.warn(f"curve.png not written: {exc}", stacklevel=2)
    return summary


def append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("a") as fh:
        for r in records:
            fh.write(strictjson.dumps(r) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def truncate_metrics(path: Path, generation: int) -> None:
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


def memory_mb() -> dict[str, float]:
    """Resident memory now (`rss_mb`) and the process's peak so far (`peak_rss_mb`), in MiB; where
    this process has used CUDA, also the GPU memory its tensors hold now (`gpu_mb`) and at most so
    far (`peak_gpu_mb`, `torch.cuda.max_memory_allocated`), summed over its devices."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024
    rss_mb = psutil.Process().memory_info().rss / 2**20
    memory = {"rss_mb": round(rss_mb, 1), "peak_rss_mb": round(max(peak_mb, rss_mb), 1)}  # ru_maxrss may lag
    if torch.cuda.is_initialized():
        devices = range(torch.cuda.device_count())
        memory["gpu_mb"] = round(sum(torch.cuda.memory_allocated(d) for d in devices) / 2**20, 1)
        memory["peak_gpu_mb"] = round(sum(torch.cuda.max_memory_allocated(d) for d in devices) / 2**20, 1)
    return memory
