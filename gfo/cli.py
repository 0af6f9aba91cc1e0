"""`gfo` command line. It only builds configs and calls the library; errors become one line, exit 2."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from gfo.errors import GfoError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Gradient-free optimization: evolution strategies for LLMs (ESSA) and test functions.",
    pretty_exceptions_enable=False,
)

AlgoOpt = Annotated[str | None, typer.Option("--algo", "-a", help="algorithm name (see `gfo list`)")]
ProblemOpt = Annotated[str | None, typer.Option("--problem", "-p", help="problem name (see `gfo list`)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML: sections algo, problem, run")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override: section.key=value (sections algo, problem, run); repeatable"),
]
TrackOpt = Annotated[
    str | None,
    typer.Option(help="experiment trackers, comma-separated: tensorboard,mlflow,wandb,trackio (run.track)"),
]


@app.command()
def run(
    algo: AlgoOpt = None,
    problem: ProblemOpt = None,
    generations: Annotated[int | None, typer.Option(help="generations to run")] = None,
    popsize: Annotated[int | None, typer.Option(help="population size (algo.popsize)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (run.seed)")] = None,
    out: Annotated[
        Path | None, typer.Option(help="run directory (default runs/<problem>-<algo>-s<seed>)")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[Path | None, typer.Option(help="continue the run in this directory")] = None,
    force: Annotated[bool, typer.Option(help="overwrite a run already in --out")] = False,
    actors: Annotated[int | None, typer.Option(help="evaluate on N Ray actors (run.actors)")] = None,
    ray_address: Annotated[str | None, typer.Option(help="join a Ray cluster: 'auto' or host:port")] = None,
    gpus_per_actor: Annotated[float | None, typer.Option(help="GPUs per Ray actor")] = None,
    track: TrackOpt = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar (run.progress=false)")] = False,
) -> None:
    """Search: ask, evaluate, tell, one JSON line per generation in RUN_DIR/metrics.jsonl."""
    from gfo import config as cfg
    from gfo.spec import resolve

    overrides = list(set_ or [])
    for key, value in (
        ("run.generations", generations),
        ("algo.popsize", popsize),
        ("run.seed", seed),
        ("run.actors", actors),
        ("run.ray_address", ray_address),
        ("run.gpus_per_actor", gpus_per_actor),
        ("run.track", track),
        ("run.progress", "false" if quiet else None),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    base = None
    if resume is not None:
        if out is not None and out != resume:
            raise GfoError(f"--out {out} and --resume {resume} differ; give only --resume")
        out = resume
        base = cfg.read_toml(resume / "config.toml") if (resume / "config.toml").exists() else None
        if base is None:
            raise GfoError(f"{resume} holds no gfo run (no config.toml); check the path")
    spec = resolve(algo, problem, config_file=config, overrides=overrides, base=base)
    out = out or Path("runs") / f"{spec.problem_name}-{spec.algorithm}-s{spec.run.seed}"
    _run(spec, out, resume=resume is not None, force=force)


def _run(spec: Any, out: Path, *, resume: bool, force: bool) -> None:
    from rich.console import Console

    from gfo.loop import Interrupted, prepare_run_dir
    from gfo.loop import run as run_loop
    from gfo.progress import ProgressBar
    from gfo.tracking import callbacks as tracking

    console = Console(stderr=True)
    # Before the run directory is touched: a tracker that is not installed is a one-line error.
    trackers = tracking(spec, out, log=lambda line: console.print(line, soft_wrap=True, markup=False))
    prepare_run_dir(out, resume=resume, force=force)
    bar = ProgressBar(console)
    callbacks = [*trackers, *([bar] if spec.run.progress else [])]
    try:
        summary = run_loop(spec, out, resume=resume, callbacks=callbacks)
    except Interrupted as exc:
        bar.close()
        # soft_wrap: the command must stay on one line to be copied, whatever the terminal width
        resume_cmd = f"gfo run --resume {shlex.quote(str(exc.run_dir))}"
        if (exc.run_dir / "summary.json").exists():
            console.print(f"results so far in {exc.run_dir}/summary.json", soft_wrap=True, markup=False)
        console.print(f"stopped; checkpoint saved. Resume with: {resume_cmd}", soft_wrap=True, markup=False)
        raise typer.Exit(exc.exit_code) from None
    finally:
        bar.close()
    line = f"done: best {summary['best']:.6g} after {summary['evaluations']} evaluations"
    line += f", {summary['wall_s']:.1f} s"
    if summary.get("heldout_initial") is not None:
        line += f"; held-out {summary['heldout_initial']:.4g} at the start"
    if summary.get("heldout_best") is not None:
        line += f", best held-out {summary['heldout_best']:.4g}"
    console.print(line)
    console.print(f"results in {out}/ (summary.json, metrics.jsonl, curve.png)")


@app.command("list")
def list_() -> None:
    """Algorithms and problems with their default hyperparameters."""
    from rich.console import Console
    from rich.table import Table

    from gfo.config import RunConfig, describe_fields
    from gfo.registry import ALGORITHMS, PROBLEMS

    console = Console()
    for title, registry in (("algorithms", ALGORITHMS), ("problems", PROBLEMS)):
        table = Table(title=title, show_lines=True)
        table.add_column("name", style="bold")
        table.add_column("about")
        table.add_column("settings (default)")
        for name in registry.names():
            try:
                cls = registry.get(name)
            except GfoError as exc:
                table.add_row(name, f"[red]unavailable: {exc}[/]", "")
                continue
            about = getattr(cls, "summary", "") or (cls.__doc__ or "").strip().split("\n")[0]
            settings = "\n".join(f"{n} = {d}" for n, d, _ in describe_fields(cls.Config))
            table.add_row(name, about, settings)
        console.print(table)
    console.print("run settings: " + ", ".join(f"{n} = {d}" for n, d, _ in describe_fields(RunConfig)))


@app.command()
def tune(
    algo: AlgoOpt = None,
    problem: ProblemOpt = None,
    trials: Annotated[int, typer.Option(help="finished trials the study should hold, in total")] = 20,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL shared by workers (default sqlite:///OUT/study.db)")
    ] = None,
    study: Annotated[str | None, typer.Option(help="study name (default <problem>-<algo>)")] = None,
    out: Annotated[Path | None, typer.Option(help="folder (default runs/tune-<problem>-<algo>)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    space: Annotated[Path | None, typer.Option(help="TOML file changing the search space")] = None,
    pruner: Annotated[str, typer.Option(help="median (stop trailing trials early) or none")] = "median",
    sampler_seed: Annotated[int | None, typer.Option(help="seed of Optuna's TPE sampler")] = None,
    track: TrackOpt = None,
) -> None:
    """Tune an algorithm's hyperparameters with Optuna; trial 0 runs the defaults. See docs/tuning.md."""
    from rich.console import Console

    from gfo.loop import Interrupted
    from gfo.spec import resolve
    from gfo.tune import TuneSettings, print_result
    from gfo.tune import tune as run_tune

    spec = resolve(algo, problem, config_file=config, overrides=_with_track(set_, track))
    out = out or Path("runs") / f"tune-{spec.problem_name}-{spec.algorithm}"
    settings = TuneSettings(
        trials=trials, out=out, storage=storage, study=study, space_file=space, pruner=pruner,
        sampler_seed=sampler_seed,
    )  # fmt: skip
    console = Console(stderr=True)
    trials_tracked = _tracked_group(spec, out, console)
    try:
        result = run_tune(
            spec, settings, log=lambda line: console.print(line, soft_wrap=True, markup=False),
            callbacks=trials_tracked,
        )  # fmt: skip
    except (Interrupted, KeyboardInterrupt) as exc:
        console.print("stopped; the interrupted trial is marked failed. Rerun the same command to continue.")
        raise typer.Exit(getattr(exc, "exit_code", 130)) from None
    print_result(result, Console())


@app.command()
def bench(
    algos: Annotated[str, typer.Option(help="comma-separated algorithms, e.g. es,pgpe,cmaes")],
    problem: ProblemOpt = None,
    seeds: Annotated[
        int | None, typer.Option(help="seeds per algorithm: run.seed, run.seed + 1, ... (default 5)")
    ] = None,
    budget_evals: Annotated[int | None, typer.Option(help="evaluations per run (a fair budget)")] = None,
    generations: Annotated[int | None, typer.Option(help="generations per run (run.generations)")] = None,
    target: Annotated[float | None, typer.Option(help="report evaluations to reach this fitness")] = None,
    out: Annotated[Path | None, typer.Option(help="benchmark folder (default runs/bench-<problem>)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="rerun every run, even completed ones")] = False,
    track: TrackOpt = None,
    suite: Annotated[
        str | None, typer.Option(help="a suite instead of --problem: bbob (COCO's 24 functions)")
    ] = None,
    functions: Annotated[str | None, typer.Option(help="--suite: function ids, e.g. 1-24 or 1,8,15")] = None,
    dims: Annotated[str | None, typer.Option(help="--suite: dimensions, e.g. 2,5,10,20")] = None,
    instances: Annotated[str | None, typer.Option(help="--suite: instances (the seeds), e.g. 1-5")] = None,
    budget: Annotated[float | None, typer.Option(help="--suite: evaluations per dimension, e.g. 1e4")] = None,
) -> None:
    """Every algorithm x seed on one problem and budget: results.csv, summary.md, curves.png.
    With --suite bbob: every algorithm on COCO's functions, in COCO's data format, with cocopp's ECDFs."""
    from rich.console import Console

    from gfo import bench as b
    from gfo.loop import Interrupted
    from gfo.spec import resolve

    if suite is not None or any(v is not None for v in (functions, dims, instances, budget)):
        from gfo.coco import bench_suite

        refused = (problem, seeds, budget_evals, generations, target, config, set_, track)
        bench_suite(suite, algos, functions, dims, instances, budget, out, force, refused)
        return
    seeds = 5 if seeds is None else seeds
    names = b.parse_algos(algos)
    if out is None:  # the problem may come from --config
        first = resolve(names[0], problem, config_file=config, overrides=_with_track(set_, track))
        out = Path("runs") / f"bench-{first.problem_name}"
    runs = b.plan(
        names, problem, seeds=seeds, out=out, config_file=config, overrides=_with_track(set_, track),
        budget_evals=budget_evals, generations=generations, force=force,
    )  # fmt: skip
    console = Console(stderr=True)
    runs_tracked = _tracked_group(runs[0].spec, out, console)
    try:
        b.run_all(
            runs, force=force, log=lambda line: console.print(line, soft_wrap=True, markup=False),
            callbacks=runs_tracked,
        )  # fmt: skip
    except (Interrupted, KeyboardInterrupt) as exc:
        console.print("stopped; checkpoint saved. Rerun the same command to continue the benchmark.")
        raise typer.Exit(getattr(exc, "exit_code", 130)) from None
    result = b.report(runs, out, target=target, budget=b.budget_text(runs[0].spec))
    b.print_result(result, Console())


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="run folders, or bench / tune folders of runs")],
    out: Annotated[
        Path | None,
        typer.Option(help="HTML file (default RUN_DIR/report.html; for several, in their common folder)"),
    ] = None,
) -> None:
    """One self-contained HTML page of curves, settings and the problem's samples, runs overlaid."""
    from rich.console import Console

    from gfo.report import write

    path = write(run_dirs, out)
    Console(stderr=True).print(f"report: {path} (figures also in {path.with_suffix('')}/)", soft_wrap=True)


def _with_track(overrides: list[str] | None, track: str | None) -> list[str]:
    return [*(overrides or []), *([f"run.track={track}"] if track is not None else [])]


def _tracked_group(spec: Any, out: Path, console: Any) -> Callable[[Any, Path], list[Any]] | None:
    """For `gfo tune` and `gfo bench`: each run tracked as its own run, grouped under OUT's name.
    A missing tracker fails here, before the first run; where the trackers write is said once."""
    from gfo.tracking import Group, callbacks, require

    if not spec.run.track:
        return None
    require(spec.run.track)
    group = Group(out.name, out)
    said: list[Path] = []

    def make(run_spec: Any, run_dir: Path) -> list[Any]:
        log = None if said else (lambda line: console.print(line, soft_wrap=True, markup=False))
        said.append(run_dir)
        return callbacks(run_spec, run_dir, group=group, log=log)

    return make


def add_plugin_commands() -> None:
    """Add the commands of the `gfo.commands` entry points to `app`, once (gfo/commands.py)."""
    from gfo.commands import add_plugin_commands as add

    add(app)


def main() -> None:
    """Entry point: user errors are one line on stderr and exit code 2, never a traceback."""
    try:
        add_plugin_commands()
        # Without standalone mode typer *returns* the code of a `typer.Exit` (and of Ctrl-C: 130).
        code = app(standalone_mode=False)
    except GfoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:
        # Typer vendors click (typer._click): usage errors such as an unknown option or a value that
        # is not a number arrive here, not as click.ClickException.
        from typer._click.exceptions import NoArgsIsHelpError

        if isinstance(exc, NoArgsIsHelpError):  # bare `gfo`: show the help
            exc.show()
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        print(f"error: {' '.join(exc.format_message().split()).rstrip('.')}{see}", file=sys.stderr)
        sys.exit(2)
    if isinstance(code, int) and code:  # success returns, so that callers in process carry on
        sys.exit(code)


if __name__ == "__main__":
    main()
