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
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
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
    _run(spec, out, resume=resume is not None, force=force, quiet=quiet)


def _run(spec: object, out: Path, *, resume: bool, force: bool, quiet: bool) -> None:
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
    callbacks = [*trackers, *([] if quiet else [bar])]
    try:
        summary = run_loop(spec, out, resume=resume, callbacks=callbacks)  # type: ignore[arg-type]
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
        refused = (problem, seeds, budget_evals, generations, target, config, set_, track)
        _bench_suite(suite, algos, functions, dims, instances, budget, out, force, refused)
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


#: The options of `gfo bench` that a suite replaces, in the order `bench` passes their values.
_NOT_WITH_SUITE: tuple[str, ...] = ("--problem", "--seeds", "--budget-evals", "--generations", "--target")
_NOT_WITH_SUITE += ("--config", "--set", "--track")


def _bench_suite(
    suite: str | None,
    algos: str,
    functions: str | None,
    dims: str | None,
    instances: str | None,
    budget: float | None,
    out: Path | None,
    force: bool,
    refused: tuple[object, ...],
) -> None:
    """`gfo bench --suite bbob`: the grid of `gfo.coco`, checked whole before the first cell runs."""
    from rich.console import Console

    from gfo import coco
    from gfo.registry import unknown_name

    if suite is None:
        raise GfoError("--functions, --dims, --instances and --budget go with --suite bbob")
    if suite not in coco.SUITES:
        raise GfoError(unknown_name("suite", suite, list(coco.SUITES)))
    given = [name for name, value in zip(_NOT_WITH_SUITE, refused, strict=True) if value is not None]
    if given:
        raise GfoError(
            f"{given[0]} does not apply with --suite {suite}: the suite sets the problems, the instances "
            "are the seeds, --budget the evaluations per dimension"
        )
    grid = coco.Grid(
        algos=coco.parse_algos(algos),
        functions=coco.parse_ints(functions or coco.DEFAULT_FUNCTIONS, "--functions"),
        dims=coco.parse_ints(dims or coco.DEFAULT_DIMS, "--dims"),
        instances=coco.parse_ints(instances or coco.DEFAULT_INSTANCES, "--instances"),
        budget=coco.DEFAULT_BUDGET if budget is None else budget,
    )
    out = out or Path("runs") / f"bench-{suite}"
    cells = coco.plan(grid, out, force=force)
    console = Console(stderr=True)
    log = lambda line: console.print(line, soft_wrap=True, markup=False)  # noqa: E731
    try:
        coco.run_all(cells, grid.sigma0, force=force, log=log)
    except KeyboardInterrupt:
        console.print("stopped; finished cells are kept. Rerun the same command to continue the benchmark.")
        raise typer.Exit(130) from None
    coco.print_result(grid, coco.report(grid, cells, out), Console())


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="run folders, or bench / tune folders of runs")],
    out: Annotated[
        Path | None,
        typer.Option(help="HTML file (default RUN_DIR/report.html; for several, in their common folder)"),
    ] = None,
) -> None:
    """One self-contained HTML page of curves, settings and sample completions, runs overlaid."""
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


ProblemConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML file (e.g. RUN/config.toml); uses its problem section")
]
ProblemSetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override: problem.key=value; repeatable")
]


def _problem_settings(problem: str | None, config: Path | None, overrides: list[str]) -> tuple[str, object]:
    """Problem name and config for the commands without an algorithm (eval, sft): [problem] + --set."""
    from gfo import config as cfg
    from gfo.registry import PROBLEMS

    data = cfg.read_toml(config) if config else {}
    name = problem or data.get("problem_name")
    if not name:
        raise GfoError("no problem given; use --problem NAME (see `gfo list`)")
    parsed = cfg.parse_set(overrides)
    for section in ("algo", "run"):
        if parsed[section]:
            key = next(iter(parsed[section]))
            raise GfoError(
                f"--set {section}.{key} has no effect here; this command takes problem.KEY=VALUE only"
            )
    values = {**data.get("problem", {}), **parsed["problem"]}
    return name, cfg.build(PROBLEMS.get(name).Config, values, "problem")


@app.command("eval")
def eval_(
    problem: ProblemOpt = None,
    adapter: Annotated[
        Path | None, typer.Option(help="PEFT adapter directory (default: problem.init_adapter, else none)")
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(help="also score B on the same items and pair them: a PEFT adapter directory, or base"),
    ] = None,
    split: Annotated[str, typer.Option(help="split to evaluate (train or test)")] = "test",
    limit: Annotated[int | None, typer.Option(help="evaluate the split's first N items")] = None,
    offset: Annotated[
        int, typer.Option(help="skip the split's first K items (e.g. those a run's held-out used)")
    ] = 0,
    out: Annotated[Path | None, typer.Option(help="folder (default runs/eval-<problem>-<split>)")] = None,
    config: ProblemConfigOpt = None,
    set_: ProblemSetOpt = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Greedy mean reward and accuracy of the model (+ adapter) on a split: OUT/eval.json, completions."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gfo_llm import evaluate as ev

    name, settings = _problem_settings(problem, config, list(set_ or []))
    out = out or Path("runs") / f"eval-{name}-{split}"
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"), MofNCompleteColumn(), BarColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
        console=console, disable=quiet, transient=True,
    )  # fmt: skip
    task = bar.add_task("eval", total=None, status="loading the model...")

    def update(label: str, done: int, total: int, reward: float) -> None:
        title = f"eval {label}".strip()
        status = f"mean reward {reward:.3f}"
        bar.update(task, description=title, completed=done, total=total, status=status)
        if not quiet and not console.is_terminal:  # logs get a line per chunk instead of a bar
            console.print(f"{title} {done}/{total}: {status}")

    with bar:
        if compare is None:
            result = ev.evaluate(
                name, settings, adapter=adapter, split=split, limit=limit,  # type: ignore[arg-type]
                offset=offset, out=out, progress=lambda done, total, reward: update("", done, total, reward),
            )  # fmt: skip
        else:
            result = ev.compare(
                name, settings, adapter=adapter, baseline=compare, split=split,  # type: ignore[arg-type]
                limit=limit, offset=offset, out=out, progress=update,
            )  # fmt: skip
    if compare is not None:
        for line in _compare_table(result, name, split):
            console.print(line, soft_wrap=True, highlight=False)
        console.print(f"results in {out}/", soft_wrap=True)
        return
    console.print(_eval_line(result, name, split, out), soft_wrap=True, highlight=False)


def _eval_line(result: dict, name: str, split: str, out: Path) -> str:
    """What `gfo eval` prints: the mean reward and the accuracy (exact answers), each by its name."""
    line = (
        f"mean reward {result['mean_reward']:.4f}, accuracy {result['accuracy']:.4f} "
        f"({result['correct']}/{result['items']} with reward >= 1) on {name} {split}"
    )
    if result.get("nonfinite_rewards"):
        line += f" ({result['nonfinite_rewards']} item(s) without a reward: counted wrong, not in the mean)"
    return f"{line}, {result['generated_tokens']} tokens in {result['wall_s']:.1f} s; results in {out}/"


def _compare_table(result: dict, name: str, split: str) -> list[str]:
    """The lines `gfo eval --compare` prints: accuracy and interval of A and B, the paired test."""
    c, n = result["compare"], result["compare"]["n"]
    rows = [
        f"paired comparison on {name} {split}, {n} items (correct: reward >= 1)",
        "     accuracy  95% Wilson interval  correct    adapter",
    ]
    for side in ("a", "b"):
        low, high = c[f"ci_{side}"]
        correct = f"{c['correct_' + side]}/{n}"
        who = c[f"adapter_{side}"] or "base (no adapter)"
        rows.append(
            f"  {side.upper()}  {c['acc_' + side]:.4f}    [{low:.4f}, {high:.4f}]     {correct:<10} {who}"
        )
    rows.append(
        f"gained {c['gained']} (B wrong, A right), lost {c['lost']} (A wrong, B right); "
        f"A - B = {c['acc_a'] - c['acc_b']:+.4f}, exact McNemar p = {c['p_value']:.4g}"
    )
    return rows


@app.command()
def sft(
    problem: ProblemOpt = None,
    out: Annotated[Path | None, typer.Option(help="folder (default runs/sft-<problem>)")] = None,
    epochs: Annotated[float, typer.Option(help="passes over the training examples")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="examples per step")] = 16,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-4,
    limit: Annotated[int | None, typer.Option(help="train on the first N training examples")] = None,
    seed: Annotated[int, typer.Option(help="seed of the LoRA init and data order")] = 0,
    config: ProblemConfigOpt = None,
    set_: ProblemSetOpt = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Supervised LoRA warm start on the task's references (ESSA): OUT/adapter for problem.init_adapter."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gfo_llm.sft import SFTSettings
    from gfo_llm.sft import sft as run_sft

    name, settings = _problem_settings(problem, config, list(set_ or []))
    train = SFTSettings(epochs=epochs, batch_size=batch_size, lr=lr, limit=limit, seed=seed)
    out = out or Path("runs") / f"sft-{name}"
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("sft step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), console=console, disable=quiet, transient=True,
    )  # fmt: skip
    task = bar.add_task("sft", total=None, status="loading the model...")

    def update(step: int, total: int, loss: float | None) -> None:
        status = "" if loss is None else f"loss {loss:.4f}"
        bar.update(task, completed=step, total=total, status=status)
        if not quiet and not console.is_terminal:  # logs get a line per step instead of a bar
            console.print(f"sft step {step}/{total}: {status}")

    with bar:
        result = run_sft(name, settings, train, out, progress=update)  # type: ignore[arg-type]
    console.print(
        f"done: {result['steps']} steps on {result['examples']} examples, loss {result['first_loss']:.4g} -> "
        f"{result['last_loss']:.4g}, {result['wall_s']:.0f} s; adapter in {result['adapter']}",
        soft_wrap=True,
    )
    console.print(f"warm-start a search with: --set problem.init_adapter={result['adapter']}", soft_wrap=True)


def main() -> None:
    """Entry point: user errors are one line on stderr and exit code 2, never a traceback."""
    try:
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
