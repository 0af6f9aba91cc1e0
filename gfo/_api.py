"""`gfo.search`: a search started from Python, the library form of `gfo run`.

>>> import gfo
>>> result = gfo.search("sphere", "sep-cmaes", generations=60, dim=5, out=tmp / "sphere")
>>> result.best < 1e-3, result.generations, result.out.name
(True, 60, 'sphere')
>>> result.best_solution.shape
torch.Size([5])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gfo import config as cfg
from gfo.errors import ConfigError
from gfo.loop import Callback
from gfo.problem import Problem
from gfo.registry import ALGORITHMS, PROBLEMS
from gfo.spec import RunSpec

__all__ = ["Summary", "search"]


@dataclass(frozen=True)
class Summary:
    """What a search found: `summary.json`'s figures, the selected solution, and where the run lives.

    `best` is the best fitness seen (in the problem's sense), `best_solution` the solution the run
    selected and exported (`run.select`: the best on held-out data where the problem has any, else
    the best candidate; or the final centre), `exported` the problem's native form of it (an LLM
    problem's PEFT adapter), `data` every field of `out/summary.json`.
    """

    out: Path
    best: float
    evaluations: int
    generations: int
    best_solution: torch.Tensor | None
    exported: Path | None
    heldout_best: float | None
    data: dict[str, Any]

    @classmethod
    def read(cls, out: str | Path) -> Summary:
        """The summary of the finished (or stopped) run in `out`."""
        import json

        from safetensors.torch import load_file

        out = Path(out)
        data = json.loads((out / "summary.json").read_text())
        tensors = load_file(str(out / "best.safetensors")) if (out / "best.safetensors").exists() else {}
        return cls(
            out=out,
            best=float(data["best"]),
            evaluations=int(data["evaluations"]),
            generations=int(data["generations"]),
            best_solution=tensors.get("selected"),
            exported=out / data["exported"] if data.get("exported") else None,
            heldout_best=data.get("heldout_best"),
            data=data,
        )


def search(
    problem: Problem | str,
    algo: str | None = None,
    *,
    out: str | Path | None = None,
    generations: int | None = None,
    popsize: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    callbacks: Sequence[Callback] = (),
    **settings: Any,
) -> Summary:
    """Search `problem` with algorithm `algo`; the run folder `out` is created (or, with `resume`,
    continued) and holds what `gfo run` writes there.

    `problem` is a `gfo.Problem` instance (no registry needed) or a registered problem's name.
    `settings` are the algorithm's, the run's and, for a problem given by name, the problem's
    settings by key, each checked like `--set` (`gfo list` shows them; an unknown key or a bad
    value is a `gfo.errors.ConfigError` naming it). `algo` defaults to `pgpe` and `seed` to 0, or,
    with `resume`, to the run's own. `out` defaults to `runs/<problem>-<algo>-s<seed>`; an existing
    run there is refused unless `force` (overwrite) or `resume`. A resumed instance must have the
    settings the run was started with (its `config` is compared with the run's `config.toml`).
    """
    from gfo.loop import prepare_run_dir
    from gfo.loop import run as run_loop

    if isinstance(problem, str):
        name, instance, problem_class = problem, None, PROBLEMS.get(problem)
    elif isinstance(problem, Problem):
        name, instance, problem_class = _name(problem), problem, None
    else:
        raise ConfigError(
            "problem must be a gfo.Problem instance or a registered problem's name; "
            f"got {type(problem).__name__}"
        )
    folder = Path(out) if out is not None else Path("runs") / f"{name}-{algo or 'pgpe'}-s{seed or 0}"
    # A resume starts from the run's saved settings, as `gfo run --resume` does; the call's win.
    saved = cfg.read_toml(folder / "config.toml") if resume and (folder / "config.toml").is_file() else {}
    algo = algo or str(saved.get("algorithm", "pgpe"))
    seed = int(saved.get("run", {}).get("seed", 0)) if seed is None else seed
    algo_class = ALGORITHMS.get(algo)
    if instance is not None and saved.get("problem"):
        _same_problem(instance, saved["problem"])
    sections: dict[str, dict[str, Any]] = {
        s: dict(saved.get(s, {})) if saved.get("algorithm") == algo or s != "algo" else {}
        for s in ("algo", "run", "problem")
    }
    owners = {"algo": algo_class.Config, "run": cfg.RunConfig}
    if problem_class is not None:
        owners["problem"] = problem_class.Config
    for key, value in settings.items():
        found = [s for s, c in owners.items() if key in {f.name for f in dataclasses.fields(c)}]
        if len(found) != 1:
            known = sorted({f.name for c in owners.values() for f in dataclasses.fields(c)})
            why = (
                f"is a setting of both {' and '.join(found)}"
                if found
                else f"is not a setting here (known: {', '.join(known)})"
            )
            raise ConfigError(f"search(): {key} {why}")
        sections[found[0]][key] = value
    sections["run"] |= {"seed": seed, "progress": progress}
    sections["run"] |= {"generations": generations} if generations is not None else {}
    sections["algo"] |= {"popsize": popsize} if popsize is not None else {}
    run_config = cfg.build(cfg.RunConfig, sections["run"], "run")
    if instance is not None and run_config.actors > 0 and name not in PROBLEMS.names():
        raise ConfigError(
            f"Ray actors build their own copy of the problem from the registry, and {name!r} is not "
            "registered; register it (docs/tasks.md) or search without actors"
        )
    spec = RunSpec(
        algorithm=algo,
        algo=cfg.build(algo_class.Config, sections["algo"], "algo"),
        problem_name=name,
        problem=instance.config
        if instance is not None
        else cfg.build(owners["problem"], sections["problem"], "problem"),
        run=run_config,
    )
    prepare_run_dir(folder, resume=resume, force=force)
    run_loop(spec, folder, resume=resume, callbacks=list(callbacks), problem=instance)
    return Summary.read(folder)


def _same_problem(instance: Problem, saved: dict[str, Any]) -> None:
    """Refuse to resume a run with an instance whose settings differ from those the run was started
    with: the checkpoint's population belongs to that problem."""
    given = type(instance.config)
    before = cfg.build(given, saved, "problem")
    changed = [
        f"{f.name} (the run's {getattr(before, f.name)!r}, given {getattr(instance.config, f.name)!r})"
        for f in dataclasses.fields(given)
        if getattr(before, f.name) != getattr(instance.config, f.name)
    ]
    if changed:
        raise ConfigError(
            f"resume: the problem's settings differ from the run's: {'; '.join(changed)}; build the "
            "problem with the run's settings (its config.toml) or start a new run"
        )


def _name(problem: Problem) -> str:
    """The registry name of an instance's class where it has one, else the class name."""
    return PROBLEMS.name_of(type(problem)) or type(problem).__name__
