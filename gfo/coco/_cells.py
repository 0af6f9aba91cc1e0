"""Running the cells of a BBOB grid, each one run under COCO's observer.

A cell starts at COCO's initial solution (the origin) with step size `sigma0`, and stops at the
budget (COCO's convention: `budget` evaluations per dimension; a population that crosses it is
evaluated whole, as in `gfo bench --budget-evals`), at COCO's final target f - f_opt <= 1e-8, or
when the optimizer's own termination criterion fires (pycma's). The seed of a cell is its instance
number.

COCO's observer logs each cell into `OUT/coco/<optimizer>/<problem id>/` (the `.info` and `.dat`
files that `cocopp` reads; cocopp merges the cells of one optimizer folder), and `cell.json` is
written beside them last, so a cell with `cell.json` is done. COCO's logger cannot continue a cut
off run (it would start a new entry counting from evaluation 1), so the cell is the unit of
resumption: a rerun skips done cells and clears and reruns any other, which its seed makes the
same run. For the same reason the cells run gfo's ask/tell core directly, without the per-
generation checkpoints of `gfo run`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gfo import peers
from gfo.checkpoint import atomic_write
from gfo.coco._grid import FINAL_TARGET, TARGETS, Cell
from gfo.registry import ALGORITHMS, PROBLEMS
from gfo.threads import one_thread


class _GfoSearcher:
    """A gfo algorithm with its default hyperparameters, through its ask/tell core."""

    def __init__(self, name: str, center: np.ndarray, sigma0: float, seed: int) -> None:
        import torch

        from gfo import config as cfg
        from gfo.algorithms import SearchSpec

        cls = ALGORITHMS.get(name)
        spec = SearchSpec("min", len(center), torch.as_tensor(center, dtype=torch.float32), sigma0)
        self._algo = cls(cfg.build(cls.Config, {}, "algo"), spec, seed)

    def ask(self) -> np.ndarray:
        self._population = self._algo.ask()
        # float64 of the very float32 points the algorithm holds: it is told about what it asked
        return self._population.detach().double().numpy()

    def tell(self, x: np.ndarray, f: np.ndarray) -> None:
        import torch

        self._algo.tell(self._population, torch.from_numpy(f))

    def stop(self) -> str | None:
        return None


def _searcher(cell: Cell, center: np.ndarray, sigma0: float) -> peers.Searcher:
    if peers.is_peer(cell.algo):
        return peers.make(cell.algo, center, sigma0, seed=cell.seed, budget=cell.budget)
    return _GfoSearcher(cell.algo, center, sigma0, cell.seed)


def algorithm_info(algo: str) -> str:
    return peers.describe(algo) if peers.is_peer(algo) else f"gfo {algo}, default hyperparameters"


def _finite(f: np.ndarray) -> np.ndarray:
    """Non-finite values (a diverged candidate) rank below every finite one, as in `gfo.loop`."""
    bad = ~np.isfinite(f)
    if not bad.any():
        return f
    finite = f[~bad]
    worst = float(finite.max()) if len(finite) else 0.0
    return np.where(bad, worst + abs(worst) + 1.0, f)


def run_cell(cell: Cell, sigma0: float) -> dict[str, Any]:
    """Run one cell under COCO's observer; write and return its `cell.json` record."""
    import torch

    from gfo.problem import Context

    cls = PROBLEMS.get("bbob")
    problem = cls(cls.Config(function=cell.function, instance=cell.instance, dim=cell.dim, stdev=sigma0))
    shutil.rmtree(cell.folder, ignore_errors=True)  # a cut off run: COCO cannot continue it
    info = algorithm_info(cell.algo)
    problem.observe(cell.folder, algorithm=cell.algo, info=info)
    fopt = problem.fopt
    targets = np.asarray(TARGETS)
    # Targets fall in order (1e2 first), so those reached are always the first `len(first_hit)`.
    first_hit: list[int] = []
    evaluations, generation, best = 0, 0, math.inf  # best: f - f_opt so far
    reason, error = "", ""
    started, cpu = time.perf_counter(), time.process_time()
    try:
        with one_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Nevergrad and pycma warn per run; the record says what happened
            searcher = _searcher(cell, problem.initial_center().double().numpy(), sigma0)
            while True:
                if evaluations >= cell.budget:
                    reason = "budget"
                    break
                if best <= FINAL_TARGET:
                    reason = "final target"
                    break
                try:
                    own = searcher.stop()
                    if own:
                        reason = f"own stop: {own}"
                        break
                    x = searcher.ask()
                except Exception as exc:  # the optimizer failed: its run ends here, as COCO logged it
                    reason, error = "error", _last_line(exc)
                    break
                context = Context(generation=generation, seed=cell.seed)
                f = problem.evaluate(torch.from_numpy(x), context).fitness.numpy()
                so_far = np.fmin.accumulate(np.fmin(f - fopt, best))  # NaN never counts as reached
                reached = int(np.searchsorted(-targets, -so_far[-1], side="right"))
                for k in range(len(first_hit), reached):
                    first_hit.append(evaluations + int(np.argmax(so_far <= targets[k])) + 1)
                evaluations += len(f)
                generation += 1
                best = float(so_far[-1])
                try:
                    searcher.tell(x, _finite(f))
                except Exception as exc:
                    reason, error = "error", _last_line(exc)
                    break
        coco_evaluations = problem.evaluations
    finally:
        problem.close()
    record = {
        "algo": cell.algo,
        "algorithm_info": info,
        "function": cell.function,
        "dim": cell.dim,
        "instance": cell.instance,
        "seed": cell.seed,
        "budget": cell.budget,
        "sigma0": sigma0,
        "evaluations": evaluations,
        "coco_evaluations": coco_evaluations,
        "fopt": fopt,
        "best_delta": best,
        "evals_to_targets": first_hit + [None] * (len(TARGETS) - len(first_hit)),
        "stop_reason": reason,
        "error": error,
        "wall_s": round(time.perf_counter() - started, 4),
        "cpu_s": round(time.process_time() - cpu, 4),
        "coco_version": problem.coco_version,
    }
    atomic_write(cell.record, (json.dumps(record, indent=1) + "\n").encode())
    return record


def _last_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip().splitlines()[-1]


def run_all(
    cells: Sequence[Cell], sigma0: float, *, force: bool = False, log: Callable[[str], None] = print
) -> None:
    """Run every cell not done before (all with `force`), in order; Ctrl-C leaves the others to a rerun."""
    todo = [c for c in cells if force or not c.record.exists()]
    if len(todo) < len(cells):
        log(f"{len(cells) - len(todo)} of {len(cells)} cells done before, skipped")
    for k, cell in enumerate(todo, 1):
        r = run_cell(cell, sigma0)
        what = f"error: {r['error']}" if r["error"] else r["stop_reason"]
        log(
            f"[{k}/{len(todo)}] {cell.algo} f{cell.function} {cell.dim}-D i{cell.instance}: "
            f"f - f_opt {r['best_delta']:.3g} after {r['evaluations']} evaluations ({what})"
        )
