"""`gfo tune`: real trials on a 5-d sphere, through the library and the real CLI entry point."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from gfo import cli
from gfo.errors import ConfigError, GfoError
from gfo.loop import prepare_run_dir, run
from gfo.registry import ALGORITHMS, PROBLEMS
from gfo.spec import resolve
from gfo.tune import BUILTIN_SPACES, Pruning, TuneSettings, merge_space, read_space_file, resolve_space, tune

SMALL = ["problem.dim=5", "run.generations=12"]


def quiet(_: str) -> None:
    pass


def main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    """`gfo.cli.main`, the installed entry point, in process (the error paths need no new interpreter)."""
    monkeypatch.setattr(sys, "argv", ["gfo", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    """Three pgpe trials on the 5-d sphere (trial 0: the defaults)."""
    out = tmp_path_factory.mktemp("tune")
    spec = resolve("pgpe", "sphere", overrides=SMALL)
    result = tune(spec, TuneSettings(trials=3, out=out, sampler_seed=0), log=quiet)
    return spec, out, result


def test_every_builtin_algorithm_declares_a_valid_space() -> None:
    problem = PROBLEMS.get("sphere")(PROBLEMS.get("sphere").Config(dim=5))
    for name in ALGORITHMS.names():
        spec = resolve(name, "sphere", overrides=["problem.dim=5"])
        dims = resolve_space(spec, BUILTIN_SPACES[name], problem)
        assert {d.name for d in dims} == set(BUILTIN_SPACES[name]), name
        for d in dims:  # trial 0 runs the defaults, so they must be inside the searched ranges
            assert d.contains(d.default), (name, d)


def test_step_sizes_scale_with_the_problem_spread() -> None:
    narrow = PROBLEMS.get("sphere")(PROBLEMS.get("sphere").Config(dim=5, stdev=0.02))
    spec = resolve("pgpe", "sphere", overrides=["problem.dim=5", "problem.stdev=0.02"])
    stdev = next(d for d in resolve_space(spec, BUILTIN_SPACES["pgpe"], narrow) if d.name == "stdev_init")
    assert (stdev.low, stdev.high, stdev.default) == pytest.approx((0.001, 0.04, 0.02))


def test_space_file_narrows_drops_and_pins(tmp_path: Path) -> None:
    spec = resolve("pgpe", "sphere", overrides=["problem.dim=5", "algo.popsize=16"])
    problem = PROBLEMS.get("sphere")(spec.problem)
    space_file = tmp_path / "space.toml"
    space_file.write_text("momentum = false\n\n[stdev_init]\nlow = 0.5\nhigh = 1.0\n")
    changes = read_space_file(space_file)
    dims = {
        d.name: d
        for d in resolve_space(spec, merge_space(BUILTIN_SPACES["pgpe"], changes, type(spec.algo)), problem)
    }
    assert "momentum" not in dims  # left out by the file
    assert "popsize" not in dims  # pinned by --set algo.popsize=16
    assert (dims["stdev_init"].low, dims["stdev_init"].high) == (1.0, 2.0)  # x spread 2
    with pytest.raises(ConfigError, match="not a setting"):
        merge_space(BUILTIN_SPACES["pgpe"], {"sigma": {"low": 1}}, type(spec.algo))
    with pytest.raises(ConfigError, match="invalid value"):
        bad = merge_space(
            BUILTIN_SPACES["cem"], {"parenthood_ratio": {"high": 1.5}}, type(resolve("cem", "sphere").algo)
        )
        resolve_space(resolve("cem", "sphere"), bad, problem)


class FakeTrial:
    def __init__(self, prune_from: int) -> None:
        self.prune_from = prune_from
        self.reports: list[tuple[float, int]] = []
        self.user_attrs: dict[str, object] = {}

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def set_user_attr(self, key: str, value: object) -> None:
        self.user_attrs[key] = value

    def should_prune(self) -> bool:
        return self.reports[-1][1] >= self.prune_from


def test_pruning_callback_reports_every_generation_and_prunes() -> None:
    trial = FakeTrial(prune_from=2)
    cb = Pruning(trial, "min")
    cb.on_generation({"generation": 0, "best_so_far": 5.0})
    cb.on_generation({"generation": 1, "best_so_far": 4.0})
    with pytest.raises(optuna.TrialPruned):
        cb.on_generation({"generation": 2, "best_so_far": 3.0})
    assert trial.reports == [(5.0, 0), (4.0, 1), (3.0, 2)]
    never = Pruning(FakeTrial(prune_from=0), "min", prune=False)  # the defaults trial always finishes
    never.on_generation({"generation": 0, "best_so_far": 1.0})


def test_pruning_uses_heldout_scores_when_the_problem_has_them() -> None:
    class WithHeldout:
        def heldout_every(self) -> int:
            return 2

    trial = FakeTrial(prune_from=99)
    cb = Pruning(trial, "max")
    cb.on_start(None, WithHeldout(), None, 0)  # type: ignore[arg-type]
    cb.on_generation({"generation": 0, "best_so_far": 0.9})
    cb.on_generation({"generation": 1, "best_so_far": 0.9, "heldout": {"center": 0.2, "best": 0.3}})
    cb.on_generation({"generation": 3, "best_so_far": 0.9, "heldout": {"center": 0.25, "best": 0.1}})
    assert trial.reports == [(0.3, 1), (0.3, 3)]  # best held-out so far, never the training fitness

    # The start's held-out score counts too, as in the run's heldout_best (the trial's objective).
    trial = FakeTrial(prune_from=99)
    cb = Pruning(trial, "max")
    cb.on_start(None, WithHeldout(), None, 0)  # type: ignore[arg-type]
    cb.on_generation({"generation": 0, "best_so_far": 0.9, "heldout_initial": 0.35})
    cb.on_generation({"generation": 1, "best_so_far": 0.9, "heldout": {"center": 0.2, "best": 0.3}})
    assert trial.reports == [(0.35, 1)]


def test_study_holds_defaults_as_trial_0_and_best_toml_reproduces_the_best(study) -> None:
    spec, out, result = study
    assert result.finished == 3 and result.ran == 3
    assert result.defaults is not None and result.defaults.number == 0
    assert result.defaults.params["popsize"] == 32 and result.defaults.params["stdev_init"] == 2.0
    assert all(r.state in ("COMPLETE", "PRUNED") for r in result.rows)
    completed = [r.value for r in result.rows if r.value is not None]
    assert result.best.value == min(completed)
    assert (out / "trial-0000" / "summary.json").exists()
    # Trial 0 is exactly a plain run with the algorithm's defaults.
    plain = tmp = out / "plain"
    prepare_run_dir(tmp, resume=False, force=True)
    assert run(spec, plain)["best"] == result.defaults.value
    # best.toml is a full RunSpec that `gfo run --config` accepts, and it gives the same score.
    best = resolve(None, None, config_file=result.best_toml)
    assert best.algorithm == "pgpe" and best.problem.dim == 5 and best.run.generations == 12
    assert {k: getattr(best.algo, k) for k in result.best.params} == result.best.params
    rerun = out / "rerun"
    prepare_run_dir(rerun, resume=False, force=True)
    assert run(best, rerun)["best"] == result.best.value
    with result.trials_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2]
    assert rows[0]["defaults"] == "True"
    for row, trial in zip(rows, result.rows, strict=True):
        assert (float(row["value"]) if row["value"] else None) == trial.value


def test_rerun_resumes_the_study_up_to_the_total(study) -> None:
    spec, out, _ = study
    more = tune(spec, TuneSettings(trials=4, out=out), log=quiet)
    assert (more.ran, more.finished) == (1, 4)
    assert sum(r.defaults for r in more.rows) == 1  # the defaults are not enqueued twice
    again = tune(spec, TuneSettings(trials=4, out=out), log=quiet)
    assert (again.ran, again.finished) == (0, 4)
    changed = resolve("pgpe", "sphere", overrides=["problem.dim=6", "run.generations=12"])
    with pytest.raises(GfoError, match=r"problem\.dim"):
        tune(changed, TuneSettings(trials=4, out=out), log=quiet)


def test_bad_inputs_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["tune", "--algo", "pgpe", "--problem", "sphere", "--out", str(tmp_path / "t")]
    for extra, message in (
        (["--trials", "0"], "--trials must be >= 1"),
        (["--trials", "2", "--storage", "nope://x"], "cannot open study storage"),
        (
            ["--trials", "2", "--storage", f"sqlite:///{tmp_path}/missing/dir/s.db"],
            "cannot open study storage",
        ),
        (["--trials", "2", "--pruner", "hyperband"], "--pruner must be"),
        (["--trials", "2", "--algo", "pgpee"], "did you mean 'pgpe'"),
    ):
        code, err = main(capsys, monkeypatch, *base, *extra)
        assert code == 2, (extra, err)
        assert err.count("\n") == 1 and message in err, err
    assert not list((tmp_path / "t").glob("trial-*"))


def test_cli_tune_then_run_best_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "tune"
    args = ["--algo", "cmaes", "--problem", "sphere", "--set", "problem.dim=5", "--set", "run.generations=8"]
    monkeypatch.setattr(sys, "argv", ["gfo", "tune", *args, "--trials", "2", "--out", str(out)])
    cli.main()  # returns normally on success
    printed = capsys.readouterr().out
    assert "defaults (trial 0)" in printed and (out / "study.db").exists()
    with (out / "trials.csv").open() as fh:
        best_value = min(float(r["value"]) for r in csv.DictReader(fh) if r["value"])
    # A fresh interpreter through the installed entry point accepts best.toml and reproduces the score.
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "gfo.cli",
            "run",
            "--config",
            str(out / "best.toml"),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert math.isclose(summary["best"], best_value, rel_tol=1e-12)
