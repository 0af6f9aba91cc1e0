"""`gfo bench --suite bbob`: gfo's algorithms and other libraries' on COCO's BBOB functions.

Every cell of the grid (optimizer x function x dimension x instance) is one run: it starts at
COCO's initial solution (the origin) with step size `sigma0`, and stops at the budget (COCO's
convention: `budget` evaluations per dimension; a population that crosses it is evaluated whole,
as in `gfo bench --budget-evals`), at COCO's final target f - f_opt <= 1e-8, or when the
optimizer's own termination criterion fires (pycma's). The seed of a cell is its instance number.

COCO's observer logs each cell into `OUT/coco/<optimizer>/<problem id>/` (the `.info` and `.dat`
files that `cocopp` reads; cocopp merges the cells of one optimizer folder), and `cell.json` is
written beside them last, so a cell with `cell.json` is done. COCO's logger cannot continue a cut
off run (it would start a new entry counting from evaluation 1), so the cell is the unit of
resumption: a rerun skips done cells and clears and reruns any other, which its seed makes the
same run. For the same reason the cells run gfo's ask/tell core directly, without the per-
generation checkpoints of `gfo run`.

The summary pools, per function group, the (function, dimension, instance, target) trials over
COCO's 51 targets 10^2 ... 10^-8 of f - f_opt: "targets reached" is the fraction of trials whose
target was reached within the budget (the end point of COCO's ECDF), and the expected running time
(ERT, Hansen et al. 2009, "Real-parameter black-box optimization benchmarking: experimental setup")
is the evaluations spent over all of them (until the target, or the whole run for a miss), in units
of the dimension, divided by the number reached.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from gfo import peers
from gfo.checkpoint import atomic_write
from gfo.errors import ConfigError, GfoError
from gfo.registry import ALGORITHMS, PROBLEMS, unknown_name
from gfo.threads import one_thread

SUITES = ("bbob",)
INSTALL_HINT = "pip install 'gfo[bbob]'"
#: COCO's 51 targets of f - f_opt, five per decade from 1e2 to 1e-8 (those its observer logs),
#: computed as COCO does, 10^(i/5): 10 ** (2 - k/5) differs in the last bit and misses its rows.
TARGETS = tuple(10 ** (i / 5) for i in range(10, -41, -1))
FINAL_TARGET = 1e-8
#: COCO's five groups of the 24 BBOB functions.
GROUPS = {
    "separable f1-5": range(1, 6),
    "moderate f6-9": range(6, 10),
    "ill-conditioned f10-14": range(10, 15),
    "multimodal f15-19": range(15, 20),
    "weakly structured f20-24": range(20, 25),
    "all f1-24": range(1, 25),
}
CELL_FILE = "cell.json"
#: What a grid defaults to: every function at 2, 5 and 10 dimensions, 3 instances, 100 x D
#: evaluations. A gfo algorithm runs it in about 10 s of CPU (docs/benchmarking.md).
DEFAULT_FUNCTIONS = "1-24"
DEFAULT_DIMS = "2,5,10"
DEFAULT_INSTANCES = "1-3"
DEFAULT_BUDGET = 100.0
COLUMNS = (
    "algo",
    "function",
    "dim",
    "instance",
    "status",
    "evaluations",
    "budget",
    "best_delta",
    "solved",
    "evals_to_final",
    "targets_reached",
    "stop_reason",
    "wall_s",
    "cpu_s",
    "error",
    "folder",
)


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """`"1-5"`, `"2,5,10,20"`, `"1-3,7"` -> sorted distinct integers (one-line error otherwise)."""
    values: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            a, b = (int(low), int(high)) if dash else (int(part), int(part))
        except ValueError:
            raise ConfigError(
                f"{option} takes integers, lists and ranges like 1-5 or 2,5,10; got {text!r}"
            ) from None
        if a > b:
            raise ConfigError(f"{option} range {part!r} is empty; write it low-high, e.g. {b}-{a}")
        values.update(range(a, b + 1))
    if not values:
        raise ConfigError(f"{option} is empty; give e.g. {option} 1-5")
    return tuple(sorted(values))


def parse_algos(text: str) -> tuple[str, ...]:
    """gfo's algorithms, `pycma` and `ng:NAME`, each checked (unknown name, missing library)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--algos is empty; give e.g. --algos sep-cmaes,cmaes,pycma,ng:CMA")
    known = ALGORITHMS.names()
    for name in names:
        if peers.is_peer(name):
            peers.check(name)
        elif name not in known:
            choices = [*known, peers.PYCMA, peers.PYCMA_DIAGONAL, "ng:NAME"]
            raise GfoError(unknown_name("algorithm", name, choices) + " in --algos")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--algos lists {', '.join(duplicates)} twice; give each once")
    return tuple(names)


@dataclass(frozen=True)
class Grid:
    """What `gfo bench --suite bbob` runs: every algorithm on every (function, dim, instance)."""

    algos: tuple[str, ...]
    functions: tuple[int, ...]
    dims: tuple[int, ...]
    instances: tuple[int, ...]
    budget: float  # evaluations per dimension (COCO's convention)
    sigma0: float = 2.0  # COCO's usual initial step size for the [-5, 5]^D region of interest

    def __post_init__(self) -> None:
        dimensions = PROBLEMS.get("bbob").DIMENSIONS
        bad = [f for f in self.functions if not 1 <= f <= 24]
        if bad:
            raise ConfigError(
                f"--functions must be BBOB ids 1 to 24; got {bad[0]}, use e.g. --functions 1-24"
            )
        bad = [d for d in self.dims if d not in dimensions]
        if bad:
            raise ConfigError(
                f"--dims must be bbob dimensions ({', '.join(map(str, dimensions))}); got {bad[0]}"
            )
        if any(i < 1 for i in self.instances):
            raise ConfigError(
                f"--instances must be >= 1; got {min(self.instances)}, use e.g. --instances 1-5"
            )
        if not (math.isfinite(self.budget) and self.budget * min(self.dims) >= 1):
            raise ConfigError(
                f"--budget is evaluations per dimension and must give >= 1 evaluation; got {self.budget}, "
                "use e.g. --budget 1e4"
            )

    def evaluations(self, dim: int) -> int:
        return math.ceil(self.budget * dim)


@dataclass(frozen=True)
class Cell:
    """One run of the grid and its folder `OUT/coco/<algo>/<problem id>/`."""

    algo: str
    function: int
    dim: int
    instance: int
    budget: int  # evaluations
    folder: Path

    @property
    def seed(self) -> int:
        return self.instance

    @property
    def record(self) -> Path:
        return self.folder / CELL_FILE


def algo_folder(out: Path, algo: str) -> Path:
    """Where COCO's data of one optimizer go (`ng:CMA` -> `ng-CMA`); cocopp reads it whole."""
    return out / "coco" / algo.replace(":", "-")


def check_installed() -> None:
    """cocoex runs the functions, cocopp draws the ECDFs: both must be there before anything runs."""
    missing = [m for m in ("cocoex", "cocopp", "six") if find_spec(m) is None]
    if missing:
        raise GfoError(f"--suite bbob needs {', '.join(missing)} (COCO); {INSTALL_HINT}")


def plan(grid: Grid, out: Path, *, force: bool = False) -> list[Cell]:
    """Every cell, in the order they run (dimension, function, instance, algorithm), checked against
    cells already in `out`: one made with another budget or step size is refused unless `force`."""
    check_installed()
    cells = [
        Cell(algo, f, d, i, grid.evaluations(d), algo_folder(out, algo) / f"bbob_f{f:03d}_i{i:02d}_d{d:02d}")
        for d in grid.dims
        for f in grid.functions
        for i in grid.instances
        for algo in grid.algos
    ]
    if not force:
        for cell in cells:
            if not cell.record.exists():
                continue
            saved = json.loads(cell.record.read_text())
            if (saved["budget"], saved["sigma0"]) != (cell.budget, grid.sigma0):
                raise GfoError(
                    f"{cell.folder} holds a run with other settings (budget {saved['budget']}, sigma0 "
                    f"{saved['sigma0']}); rerun with the same --budget, use another --out, or --force"
                )
    return cells


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


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Pooled:
    """Trials of one optimizer on a set of cells, pooled over COCO's 51 targets."""

    cells: int
    trials: int
    reached: int
    cost: float  # evaluations / dimension, summed over trials (to the target, or the whole run)
    solved: int  # cells that reached the final target 1e-8

    @property
    def fraction(self) -> float:
        return self.reached / self.trials if self.trials else math.nan

    @property
    def ert(self) -> float:
        """Expected running time in evaluations / dimension: all evaluations spent per target reached."""
        return self.cost / self.reached if self.reached else math.inf


def pool(records: Sequence[dict[str, Any]]) -> Pooled:
    trials = reached = solved = 0
    cost = 0.0
    for r in records:
        for hit in r["evals_to_targets"]:
            trials += 1
            reached += hit is not None
            cost += (r["evaluations"] if hit is None else hit) / r["dim"]
        solved += r["evals_to_targets"][-1] is not None
    return Pooled(len(records), trials, reached, cost, solved)


def collect(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """The records of the done cells (read from their `cell.json`, never from memory)."""
    return [json.loads(c.record.read_text()) for c in cells if c.record.exists()]


def write_results_csv(cells: Sequence[Cell], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for cell in cells:
            base = [cell.algo, cell.function, cell.dim, cell.instance]
            if not cell.record.exists():
                writer.writerow([*base, "not run", "", cell.budget, *[""] * 8, str(cell.folder)])
                continue
            r = json.loads(cell.record.read_text())
            hits = r["evals_to_targets"]
            writer.writerow(
                [
                    *base,
                    "error" if r["error"] else "ok",
                    r["evaluations"],
                    r["budget"],
                    repr(r["best_delta"]),
                    hits[-1] is not None,
                    "" if hits[-1] is None else hits[-1],
                    sum(h is not None for h in hits),
                    r["stop_reason"],
                    r["wall_s"],
                    r["cpu_s"],
                    r["error"],
                    str(cell.folder),
                ]
            )


def _ert(value: float) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.3g}" if value < 1e5 else f"{value:.2e}"


def _ranges(values: Sequence[int]) -> str:
    """(1, 2, 3, 5) -> "1-3,5"."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def summary_markdown(
    grid: Grid, records: Sequence[dict[str, Any]], *, planned: int, wall_s: float, cpu_s: float
) -> str:
    """Targets reached and ERT per function group, over all dimensions and per dimension."""
    groups = {g: set(fs) & set(grid.functions) for g, fs in GROUPS.items()}
    groups = {g: fs for g, fs in groups.items() if fs}
    by_algo = {a: [r for r in records if r["algo"] == a] for a in grid.algos}

    def table(title: str, cell: Callable[[list[dict[str, Any]]], str], dims: Sequence[int]) -> list[str]:
        header = ["algorithm", *groups]
        lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for algo, mine in by_algo.items():
            row = [algo]
            for fs in groups.values():
                chosen = [r for r in mine if r["function"] in fs and r["dim"] in dims]
                row.append(cell(chosen) if chosen else "-")
            lines.append("| " + " | ".join(row) + " |")
        return [*lines, ""]

    def reached(rs: list[dict[str, Any]]) -> str:
        p, errors = pool(rs), sum(bool(r["error"]) for r in rs)
        return f"{100 * p.fraction:.1f}% ({p.solved}/{p.cells})" + (f", {errors} errors" if errors else "")

    def ert(rs: list[dict[str, Any]]) -> str:
        return _ert(pool(rs).ert)

    dims_text = ",".join(map(str, grid.dims))
    lines = [
        "# BBOB benchmark",
        "",
        f"{len(grid.algos)} optimizers on BBOB functions {_ranges(grid.functions)}, dimensions {dims_text}, "
        f"instances {_ranges(grid.instances)}; budget {grid.budget:g} x D evaluations, start at the origin "
        f"with step size {grid.sigma0:g}. {len(records)} of {planned} cells done. "
        f"The runs took {wall_s:.0f} s ({cpu_s:.0f} s of CPU).",
        "",
        "Targets: COCO's 51 values of f - f_opt from 1e2 to 1e-8. *Targets reached*: the fraction of "
        "(function, dimension, instance, target) trials reached within the budget (the end of COCO's "
        "ECDF), with the runs that reached 1e-8 in brackets. *ERT*: evaluations spent over all trials "
        "(to the target, or the whole run when missed), divided by D and by the number of targets "
        "reached; lower is better, inf: none reached. A run that stops or fails early is charged what it "
        "evaluated (COCO's convention): read ERT with the targets reached and how the runs ended.",
        "",
    ]
    lines += table("## Targets reached, all dimensions", reached, grid.dims)
    lines += table("## ERT / D, all dimensions", ert, grid.dims)
    for reference in (peers.PYCMA, peers.PYCMA_DIAGONAL):
        if by_algo.get(reference):
            title = f"## ERT relative to {reference}, all dimensions (1.00: the same; lower: faster)"
            lines += table(title, _ratio_to(by_algo[reference]), grid.dims)
    for d in grid.dims:
        lines += table(
            f"## {d}-D: targets reached / ERT per D",
            lambda rs: f"{100 * pool(rs).fraction:.0f}% / {_ert(pool(rs).ert)}",
            [d],
        )
    stops: dict[str, dict[str, int]] = {}
    for r in records:
        key = "error: " + r["error"] if r["error"] else r["stop_reason"].split(":")[0]
        stops.setdefault(r["algo"], {}).setdefault(key, 0)
        stops[r["algo"]][key] += 1
    lines += ["## How the runs ended", ""]
    for algo, counts in stops.items():
        lines.append(f"- {algo}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines += ["", "Per-run numbers: results.csv. COCO data: coco/. ECDFs (cocopp): ecdf/ and cocopp/.", ""]
    return "\n".join(lines)


def _ratio_to(reference: Sequence[dict[str, Any]]) -> Callable[[list[dict[str, Any]]], str]:
    """ERT of some cells over the reference's ERT on the same (function, dimension, instance)."""
    by_key = {(r["function"], r["dim"], r["instance"]): r for r in reference}

    def ratio(rs: list[dict[str, Any]]) -> str:
        keys = [(r["function"], r["dim"], r["instance"]) for r in rs]
        ours, theirs = pool(rs).ert, pool([by_key[k] for k in keys if k in by_key]).ert
        return f"{ours / theirs:.2f}" if math.isfinite(ours) and math.isfinite(theirs) else "-"

    return ratio


def run_cocopp(grid: Grid, out: Path, *, timeout: float | None = None) -> list[Path]:
    """COCO's ECDF plots of every optimizer, by cocopp itself (in its own process: it changes
    matplotlib's and its own global settings). PNG copies go to `out/ecdf/`; its log to cocopp.log."""
    folders = [str(algo_folder(out, a)) for a in grid.algos if algo_folder(out, a).exists()]
    if not folders:
        return []
    target = out / "cocopp"
    shutil.rmtree(target, ignore_errors=True)
    # cocopp saves at 60 dpi unless in_a_hurry=0, which also takes its bootstrap from 30 samples to
    # 1000: so the PNGs alone are saved at 150 dpi.
    code = """if True:
        import sys, warnings
        warnings.simplefilter("ignore")
        import matplotlib.pyplot as plt
        import cocopp
        save = plt.savefig
        def savefig(name, *args, **kwargs):
            return save(name, *args, **{**kwargs, **({"dpi": 150} if str(name).endswith(".png") else {})})
        plt.savefig = savefig
        cocopp.genericsettings.figure_file_formats = ["svg", "png"]
        cocopp.main(sys.argv[1:])
    """
    argv = ["-o", str(target), "--rld-only", "--no-rld-single-fcts", *folders]
    with (out / "cocopp.log").open("w") as log:
        subprocess.run(
            [sys.executable, "-c", code, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=timeout,
        )
    ecdf = out / "ecdf"
    shutil.rmtree(ecdf, ignore_errors=True)
    ecdf.mkdir()
    copies = []
    for png in sorted(target.rglob("pprldmany*.png")):
        copies.append(Path(shutil.copy2(png, ecdf / png.name)))
    return copies


@dataclass(frozen=True)
class SuiteResult:
    records: list[dict[str, Any]]
    results_csv: Path
    summary_md: Path
    ecdf: list[Path]


def report(grid: Grid, cells: Sequence[Cell], out: Path, *, plots: bool = True) -> SuiteResult:
    """results.csv, summary.md and (through cocopp) the ECDF plots, from the cell folders."""
    records = collect(cells)
    out.mkdir(parents=True, exist_ok=True)
    write_results_csv(cells, out / "results.csv")
    wall, cpu = sum(r["wall_s"] for r in records), sum(r["cpu_s"] for r in records)
    summary = summary_markdown(grid, records, planned=len(cells), wall_s=wall, cpu_s=cpu)
    (out / "summary.md").write_text(summary)
    ecdf: list[Path] = []
    if plots and records:
        try:
            ecdf = run_cocopp(grid, out)
        except Exception as exc:  # a plot must never cost the table
            warnings.warn(f"cocopp failed ({exc}); see {out / 'cocopp.log'}", stacklevel=2)
    return SuiteResult(records, out / "results.csv", out / "summary.md", ecdf)


def print_result(grid: Grid, result: SuiteResult, console: Any) -> None:
    """Targets reached and ERT / D per function group, all dimensions pooled."""
    from rich.table import Table

    groups = [g for g, fs in GROUPS.items() if set(fs) & set(grid.functions)]
    table = Table(title="targets reached / ERT per D, all dimensions")
    table.add_column("algorithm")
    for g in groups:
        table.add_column(g, justify="right")
    for algo in grid.algos:
        mine = [r for r in result.records if r["algo"] == algo]
        cells = []
        for g in groups:
            chosen = [r for r in mine if r["function"] in GROUPS[g]]
            p = pool(chosen)
            cells.append(f"{100 * p.fraction:.0f}% / {_ert(p.ert)}" if chosen else "-")
        table.add_row(algo, *cells)
    console.print(table)
    for algo in grid.algos:
        failed = [r for r in result.records if r["algo"] == algo and r["error"]]
        if failed:
            first = failed[0]
            where = f"f{first['function']} {first['dim']}-D i{first['instance']}"
            line = f"{algo}: {len(failed)} cells ended with an error, the first ({where}): {first['error']}"
            console.print(f"[red]error[/] {line}", soft_wrap=True, highlight=False)
    files = [result.results_csv, result.summary_md, *([result.ecdf[0].parent] if result.ecdf else [])]
    console.print("wrote " + ", ".join(str(f) for f in files), soft_wrap=True)
