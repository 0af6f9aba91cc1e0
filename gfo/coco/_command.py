"""`gfo bench --suite bbob`: the command's options checked and the grid run (gfo/cli.py calls it)."""

from __future__ import annotations

from pathlib import Path

import typer

from gfo.errors import GfoError
from gfo.registry import unknown_name

#: The options of `gfo bench` that a suite replaces, in the order `bench` passes their values.
_NOT_WITH_SUITE: tuple[str, ...] = ("--problem", "--seeds", "--budget-evals", "--generations", "--target")
_NOT_WITH_SUITE += ("--config", "--set", "--track")


def bench_suite(
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
