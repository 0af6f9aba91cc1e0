"""COCO's BBOB suite: values are cocoex's own, the grid resumes, cocopp reads what gfo writes."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

cocoex = pytest.importorskip("cocoex")
pytest.importorskip("cocopp")
pytest.importorskip("cma")

from gfo import cli, coco, peers  # noqa: E402
from gfo.errors import ConfigError, GfoError  # noqa: E402
from gfo.problem import Context  # noqa: E402
from problems.bbob import BBOB, BBOBConfig  # noqa: E402

# cocopp warns about every data set of fewer than 15 instances (COCO's standard count)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:cocopp")
HAS_NEVERGRAD = __import__("importlib").util.find_spec("nevergrad") is not None
# The cheapest Nevergrad optimizer to import and run: the test is of the wrapper, not of CMA.
ALGOS = ("sep-cmaes", "pycma", "pycma-diagonal", *(["ng:OnePlusOne"] if HAS_NEVERGRAD else []))
GRID = coco.Grid(algos=ALGOS, functions=(1, 8, 15), dims=(2, 3), instances=(1, 2), budget=30)


def quiet(_: str) -> None:
    pass


def without_timing(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("wall_s", "cpu_s")}


def coco_files(folder: Path) -> dict[str, str]:
    """The text of every COCO file of a cell (not gfo's cell.json)."""
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != coco.CELL_FILE}  # fmt: skip


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[coco.Cell], Path, coco.SuiteResult]:
    out = tmp_path_factory.mktemp("bbob")
    cells = coco.plan(GRID, out)
    coco.run_all(cells, GRID.sigma0, log=quiet)
    return cells, out, coco.report(GRID, cells, out)


@pytest.mark.parametrize(("function", "instance", "dim"), [(1, 1, 2), (8, 3, 5), (15, 2, 10), (24, 7, 20)])
def test_bbob_values_are_cocoex_values(function: int, instance: int, dim: int) -> None:
    problem = BBOB(BBOBConfig(function=function, instance=instance, dim=dim))
    x = torch.randn(6, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(function)) * 3
    ours = problem.evaluate(x, Context(generation=0, seed=0)).fitness
    suite = cocoex.Suite("bbob", f"instances: {instance}", "")  # the default suite has instances 1-15
    theirs = suite.get_problem_by_function_dimension_instance(function, dim, instance)
    assert ours.dtype == torch.float64
    assert ours.tolist() == [theirs(row) for row in x.numpy()]  # the very values, bit for bit
    assert problem.evaluations == 6 and problem.id == theirs.id
    # f_opt (from cocoex.BareProblem) is f at the optimum of the same problem
    bare = cocoex.BareProblem("bbob", function, dim, instance)
    assert theirs(bare.best_parameter()) == pytest.approx(problem.fopt, abs=1e-9)
    assert problem.initial_center().tolist() == [0.0] * dim == list(theirs.initial_solution)
    theirs.free()
    problem.close()


def test_bbob_config_is_checked() -> None:
    for values, message in (
        ({"function": 25}, "1 to 24"),
        ({"dim": 4}, "bbob dimensions"),
        ({"instance": 0}, "instance must be >= 1"),
        ({"stdev": 0.0}, "stdev must be > 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            BBOBConfig(**values)  # type: ignore[arg-type]


def test_the_bbob_problem_runs_in_gfo_run(tmp_path: Path) -> None:
    from gfo.loop import prepare_run_dir, run
    from gfo.spec import resolve

    spec = resolve(
        "sep-cmaes", "bbob", overrides=["problem.function=1", "problem.dim=3", "run.generations=30"]
    )
    prepare_run_dir(tmp_path, resume=False, force=False)
    summary = run(spec, tmp_path)
    fopt = BBOB(spec.problem).fopt
    assert summary["coco_id"] == "bbob_f001_i01_d03" and summary["best"] - fopt < 1e-2


def test_cocopp_reads_what_gfo_writes(grid) -> None:
    from cocopp import pproc

    cells, out, _ = grid
    records = {(c.algo, c.function, c.dim, c.instance): json.loads(c.record.read_text()) for c in cells}
    for algo in ALGOS:
        datasets = pproc.DataSetList(str(coco.algo_folder(out, algo)))
        assert sorted((ds.funcId, ds.dim) for ds in datasets) == [(f, d) for f in (1, 8, 15) for d in (2, 3)]
        for ds in datasets:
            assert ds.algId == coco.algo_folder(out, algo).name  # cocopp names an algorithm by its folder
            assert sorted(ds.instancenumbers) == [1, 2]
            for instance, maxevals in zip(ds.instancenumbers, ds.maxevals, strict=True):
                assert maxevals == records[(algo, ds.funcId, ds.dim, instance)]["evaluations"]
            # evaluations to reach each of COCO's targets: cocopp (from the .dat files) = gfo's record
            theirs = ds.detEvals(list(coco.TARGETS))
            for k in range(len(coco.TARGETS)):
                for instance, evals in zip(ds.instancenumbers, theirs[k], strict=True):
                    ours = records[(algo, ds.funcId, ds.dim, instance)]["evals_to_targets"][k]
                    assert (None if math.isnan(evals) else int(evals)) == ours, (algo, ds.funcId, k)


def test_every_cell_spends_the_same_budget(grid) -> None:
    cells, out, _ = grid
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["algo"], int(r["function"]), int(r["dim"]), int(r["instance"])) for r in rows] == [
        (c.algo, c.function, c.dim, c.instance) for c in cells
    ]
    for cell, row in zip(cells, rows, strict=True):
        r = json.loads(cell.record.read_text())
        assert r["evaluations"] == r["coco_evaluations"] == int(row["evaluations"])  # COCO counted the same
        assert float(row["best_delta"]) == r["best_delta"] and row["status"] == "ok"
        assert r["budget"] == math.ceil(30 * cell.dim)
        if r["stop_reason"] == "budget":  # a population that crosses the budget is evaluated whole
            assert r["budget"] <= r["evaluations"] < r["budget"] + 16
        else:
            assert r["stop_reason"] == "final target" or r["stop_reason"].startswith("own stop")
        hits = r["evals_to_targets"]
        reached = [h for h in hits if h is not None]
        assert hits[: len(reached)] == reached and reached == sorted(reached)  # targets fall in order
        assert all(1 <= h <= r["evaluations"] for h in reached)


def test_summary_and_ecdf_plots(grid) -> None:
    cells, out, result = grid
    text = (out / "summary.md").read_text()
    for algo in ALGOS:
        assert f"| {algo} |" in text
    assert "separable f1-5" in text and "multimodal f15-19" in text
    assert "ERT relative to pycma," in text and "ERT relative to pycma-diagonal," in text
    pooled = coco.pool([json.loads(c.record.read_text()) for c in cells if c.algo == "pycma"])
    assert pooled.trials == 3 * 2 * 2 * 51 and 0 < pooled.reached <= pooled.trials
    assert f"{100 * pooled.fraction:.1f}% ({pooled.solved}/12)" in text
    names = {p.name for p in result.ecdf}
    assert {"pprldmany_02D_noiselessall.png", "pprldmany_03D_separ.png"} <= names
    for png in result.ecdf:
        assert png.read_bytes().startswith(b"\x89PNG")


def test_rerun_skips_done_cells_and_reruns_a_cut_off_one(grid) -> None:
    cells, _, _ = grid
    logs: list[str] = []
    coco.run_all(cells, GRID.sigma0, log=logs.append)
    assert logs == [f"{len(cells)} of {len(cells)} cells done before, skipped"]
    victim = cells[5]
    before, files = json.loads(victim.record.read_text()), coco_files(victim.folder)
    # Cut off mid-run: COCO's files half written, no cell.json
    victim.record.unlink()
    dat = next(victim.folder.rglob("*.dat"))
    dat.write_text(dat.read_text()[:-40])
    logs.clear()
    coco.run_all(cells, GRID.sigma0, log=logs.append)
    assert logs[0] == f"{len(cells) - 1} of {len(cells)} cells done before, skipped" and len(logs) == 2
    assert without_timing(json.loads(victim.record.read_text())) == without_timing(before)
    assert coco_files(victim.folder) == files  # the same run again, COCO's files byte for byte


def test_an_interrupted_grid_continues_to_the_same_result(grid, tmp_path: Path) -> None:
    cells, out, _ = grid
    mine = coco.plan(GRID, tmp_path)
    seen: list[str] = []

    def stop_after_three(line: str) -> None:
        seen.append(line)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        coco.run_all(mine, GRID.sigma0, log=stop_after_three)
    logs: list[str] = []
    coco.run_all(mine, GRID.sigma0, log=logs.append)
    assert logs[0] == f"3 of {len(mine)} cells done before, skipped"
    for ours, theirs in zip(mine, cells, strict=True):
        assert without_timing(json.loads(ours.record.read_text())) == without_timing(
            json.loads(theirs.record.read_text())
        )
        assert coco_files(ours.folder) == {
            k: v.replace(str(out), str(tmp_path)) for k, v in coco_files(theirs.folder).items()
        }


def test_plans_are_checked_before_anything_runs(grid, tmp_path: Path) -> None:
    _, out, _ = grid
    with pytest.raises(GfoError, match="other settings"):
        coco.plan(coco.Grid(GRID.algos, GRID.functions, GRID.dims, GRID.instances, budget=31), out)
    assert coco.parse_ints("1-3,7, 5", "--functions") == (1, 2, 3, 5, 7)
    for text, message in (("3-1", "is empty"), ("a", "integers"), ("", "empty")):
        with pytest.raises(ConfigError, match=message):
            coco.parse_ints(text, "--dims")
    for kwargs, message in (
        ({"functions": (25,)}, "1 to 24"),
        ({"dims": (4,)}, "bbob dimensions"),
        ({"instances": (0,)}, "instances must be >= 1"),
        ({"budget": 0.1}, ">= 1 evaluation"),
    ):
        with pytest.raises(ConfigError, match=message):
            coco.Grid(
                **{
                    "algos": ("cmaes",),
                    "functions": (1,),
                    "dims": (2,),
                    "instances": (1,),
                    "budget": 10,
                    **kwargs,
                }
            )
    with pytest.raises(GfoError, match="did you mean 'pycma'"):
        coco.parse_algos("sep-cmaes,pycmaa")
    with pytest.raises(GfoError, match="twice"):
        coco.parse_algos("pycma,pycma")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not HAS_NEVERGRAD, reason="nevergrad not installed")
def test_unknown_nevergrad_optimizer_is_named() -> None:
    with pytest.raises(GfoError, match="did you mean 'ng:CMA'"):
        coco.parse_algos("ng:CMAA")


def test_a_missing_library_is_one_line_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cma", None)  # import cma now raises ImportError
    monkeypatch.setitem(sys.modules, "nevergrad", None)
    for name in ("pycma", "ng:CMA"):
        with pytest.raises(GfoError, match=r"pip install 'gfo\[bbob\]'"):
            peers.check(name)
    monkeypatch.setattr(coco, "find_spec", lambda name: None if name == "cocoex" else object())
    with pytest.raises(GfoError, match=r"needs cocoex .*pip install 'gfo\[bbob\]'"):
        coco.check_installed()


def test_pycma_peers_are_pycma() -> None:
    import cma

    def samples(es: Any, tell: Any) -> list[np.ndarray]:
        out = []
        for _ in range(5):
            x = np.asarray(es.ask())
            tell(es, x, (x**2).sum(1))
            out.append(x)
        return out

    for name, diagonal in (("pycma", False), ("pycma-diagonal", True)):
        # one after the other: pycma draws from numpy's global generator, which its seed option seeds
        es = peers.make(name, np.zeros(3), 2.0, seed=1, budget=60)
        ours = samples(es, lambda es, x, f: es.tell(x, f))
        assert es.stop() is None
        options = {"seed": 1, "CMA_diagonal": diagonal, "verbose": -9, "verb_log": 0}
        reference = cma.CMAEvolutionStrategy(np.zeros(3), 2.0, options)
        theirs = samples(reference, lambda es, x, f: es.tell(list(x), f.tolist()))
        assert ours[0].shape == (7, 3)  # popsize 4 + 3 ln 3
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_cli_bad_inputs_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "b"
    for args, message in (
        (["--suite", "bbob", "--problem", "sphere"], "--problem does not apply with --suite bbob"),
        (["--suite", "bbob", "--seeds", "3"], "--seeds does not apply"),
        (["--suite", "nope"], "unknown suite 'nope'"),
        (["--suite", "bbob", "--functions", "1-30"], "BBOB ids 1 to 24"),
        (["--suite", "bbob", "--dims", "2,4"], "bbob dimensions"),
        (["--suite", "bbob", "--algos", "cmaes,pycmaa"], "did you mean 'pycma'"),
        (["--budget", "10"], "go with --suite bbob"),
    ):
        argv = ["gfo", "bench", "--algos", "cmaes", "--out", str(out), *args]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err, (args, err)
    assert not out.exists()


def test_cli_bench_suite_through_the_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "gfo.cli", "bench", "--suite", "bbob", "--algos", "cem,pycma"]
    cmd += ["--functions", "1-2", "--dims", "2", "--instances", "1", "--budget", "1e1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["algo"], r["function"], r["status"]) for r in rows] == [
        ("cem", "1", "ok"), ("pycma", "1", "ok"), ("cem", "2", "ok"), ("pycma", "2", "ok")
    ]  # fmt: skip
    assert "targets reached / ERT per D" in done.stdout and (out / "ecdf").is_dir()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert "4 of 4 cells done before, skipped" in again.stderr
    shutil.rmtree(out)
