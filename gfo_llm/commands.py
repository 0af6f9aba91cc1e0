"""`gfo eval`, `gfo sft` and `gfo learn`: the commands gfo_llm adds to `gfo` (`gfo.commands` entry
points).

Each is a plain function; gfo's CLI registers it under the entry point's name. Importing this module
imports typer only: torch and transformers are imported inside the commands, so `gfo --help` stays
fast. User errors are `GfoError`s, which the CLI prints as one line with exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gfo.cli import ProblemOpt
from gfo.errors import GfoError
from gfo_llm.extras import require

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


def eval_(
    problem: ProblemOpt = None,
    adapter: Annotated[
        Path | None, typer.Option(help="PEFT adapter directory (default: problem.init_adapter, else none)")
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(help="also score B on the same items and pair them: a PEFT adapter directory, or base"),
    ] = None,
    kl_to: Annotated[
        str | None,
        typer.Option(help="also the KL from this reference on the model's own answers: base, or an adapter"),
    ] = None,
    split: Annotated[str, typer.Option(help="split to evaluate (train or test)")] = "test",
    limit: Annotated[int | None, typer.Option(help="evaluate the split's first N items")] = None,
    offset: Annotated[
        int, typer.Option(help="skip the split's first K items (e.g. those a run's held-out used)")
    ] = 0,
    out: Annotated[Path | None, typer.Option(help="folder (default runs/eval-<problem>-<split>)")] = None,
    samples: Annotated[
        int,
        typer.Option(
            help="also k seeded samples per item at problem.temperature (0.8 if it is 0): pass@1 and "
            "pass@k beside the greedy accuracy; 0: greedy only"
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(help="seed of the --samples draws")] = 0,
    config: ProblemConfigOpt = None,
    set_: ProblemSetOpt = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Greedy mean reward and accuracy of the model (+ adapter) on a split: OUT/eval.json, completions."""
    require("llm", "gfo eval")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gfo_llm import evaluate as ev

    if compare is not None and kl_to is not None:
        raise GfoError("--compare B already reports the KL from B; drop --kl-to")
    if samples < 0:
        raise GfoError(f"--samples must be >= 0; got {samples}, use e.g. 4 (0: greedy only)")
    if compare is not None and samples:
        raise GfoError(
            "--samples scores one model, --compare pairs greedy answers; run gfo eval --samples on each"
        )
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
                kl_to=kl_to, samples=samples, seed=seed,
            )  # fmt: skip
        else:
            result = ev.compare(
                name, settings, adapter=adapter, baseline=compare, split=split,  # type: ignore[arg-type]
                limit=limit, offset=offset, out=out, progress=update,
            )  # fmt: skip
    scored = result["compare"]["n"] if compare is not None else result["items"]
    if limit is not None and scored < limit:
        console.print(
            f"note: --limit {limit}, but {name}'s {split} split has {scored} items past --offset {offset}; "
            f"scored {scored} (a generated task draws more with --set problem.test_size={offset + limit})",
            soft_wrap=True,
            highlight=False,
        )
    if compare is not None:
        for line in _compare_table(result, name, split):
            console.print(line, soft_wrap=True, highlight=False)
        console.print(f"results in {out}/", soft_wrap=True)
        return
    console.print(_eval_line(result, name, split, out), soft_wrap=True, highlight=False)
    if "sampled" in result:
        console.print(_sampled_line(result), soft_wrap=True, highlight=False)
    if "kl" in result:
        console.print(_kl_line(result["kl"], "the model"), soft_wrap=True, highlight=False)


def _eval_line(result: dict, name: str, split: str, out: Path) -> str:
    """What `gfo eval` prints: the mean reward and the accuracy (exact answers), each by its name."""
    line = (
        f"mean reward {result['mean_reward']:.4f}, accuracy {result['accuracy']:.4f} "
        f"({result['correct']}/{result['items']} with reward >= 1) on {name} {split}"
    )
    if result.get("nonfinite_rewards"):
        line += f" ({result['nonfinite_rewards']} item(s) without a reward: counted wrong, not in the mean)"
    return f"{line}, {result['generated_tokens']} tokens in {result['wall_s']:.1f} s; results in {out}/"


def _sampled_line(result: dict) -> str:
    """pass@1 and pass@k of `--samples k`, beside the greedy accuracy."""
    s = result["sampled"]
    k = s["k"]
    return (
        f"sampled: pass@1 {s['pass_at_1']:.4f} (mean over {k} samples per item), "
        f"pass@{k} {s['pass_at_k']:.4f}; greedy accuracy {result['accuracy']:.4f} "
        f"(temperature {s['temperature']:g}, top_p {s['top_p']:g}, seed {s['seed']}, "
        f"{s['generated_tokens']} sampled tokens)"
    )


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
    if result.get("kl"):
        rows.append(_kl_line(result["kl"], "A"))
    else:  # the vllm backend or the hf engine: no answer token ids to score
        rows.append("KL(A || B): not measured (it needs the transformers backend's continuous engine)")
    return rows


def _kl_line(kl: dict, who: str) -> str:
    """The KL of `who`'s answers from the reference, per token and per answer."""
    reference = "the base model" if kl["reference"] == "base" else kl["reference"]
    return (
        f"KL({who} || {reference}) on {who}'s answers: {kl['per_token']:.4f} nats per token, "
        f"{kl['per_answer_mean']:.3f} per answer (median {kl['per_answer_median']:.3f})"
    )


def sft(
    problem: ProblemOpt = None,
    out: Annotated[Path | None, typer.Option(help="folder (default runs/sft-<problem>)")] = None,
    epochs: Annotated[float, typer.Option(help="passes over the training examples")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="examples per step")] = 16,
    micro_batch_size: Annotated[
        int, typer.Option(help="examples per forward/backward pass (memory); a step accumulates them")
    ] = 4,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-4,
    limit: Annotated[int | None, typer.Option(help="train on the first N training examples")] = None,
    seed: Annotated[int, typer.Option(help="seed of the LoRA init and data order")] = 0,
    config: ProblemConfigOpt = None,
    set_: ProblemSetOpt = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Supervised LoRA warm start on the task's references (ESSA): OUT/adapter for problem.init_adapter."""
    require("grpo", "gfo sft")  # TRL's SFTTrainer
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gfo_llm.sft import SFTSettings
    from gfo_llm.sft import sft as run_sft

    name, settings = _problem_settings(problem, config, list(set_ or []))
    train = SFTSettings(
        epochs=epochs, batch_size=batch_size, micro_batch_size=micro_batch_size, lr=lr, limit=limit, seed=seed
    )
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


def learn(
    recipe: Annotated[
        str, typer.Option(help=f"a shipped recipe ({', '.join(_recipes())}) or a recipe .toml file")
    ] = "quickstart",
    json_: Annotated[
        Path | None,
        typer.Option(
            "--json", help="result file, the PNG beside it (default runs/learn-<recipe>/result.json)"
        ),
    ] = None,
    method: Annotated[
        str, typer.Option(help="es (the recipe's search) or grpo (TRL's GRPO, same budget)")
    ] = "es",
    out: Annotated[Path | None, typer.Option(help="folder of the steps (default: --json less .json)")] = None,
    model: Annotated[str | None, typer.Option(help="problem.model of every step")] = None,
    items: Annotated[int | None, typer.Option(help="fresh items scored (default: the recipe's)")] = None,
    generations: Annotated[int | None, typer.Option(help="generations of the search")] = None,
    popsize: Annotated[int | None, typer.Option(help="candidates a generation")] = None,
    algo: Annotated[
        str | None, typer.Option(help="the search's algorithm (drops the recipe's algo.*)")
    ] = None,
    sft: Annotated[
        bool | None, typer.Option("--sft/--no-sft", help="warm start by SFT, or from the base model")
    ] = None,
    sft_limit: Annotated[int | None, typer.Option(help="SFT on the first N training items")] = None,
    sft_lr: Annotated[float | None, typer.Option(help="SFT learning rate")] = None,
    start: Annotated[
        str | None,
        typer.Option(help="an existing warm-start adapter instead of SFT (its sft.json time counts)"),
    ] = None,
    completions: Annotated[
        int | None, typer.Option(help="GRPO's training completions (needed where ES scores references)")
    ] = None,
    seed: Annotated[int, typer.Option(help="the search's seed")] = 0,
    fresh: Annotated[
        str | None,
        typer.Option(
            help="fresh items: seed (another data_seed's test stream) or offset (past the selection)"
        ),
    ] = None,
    eval_cache: Annotated[
        Path | None, typer.Option(help="reusable evals (default: eval-cache beside --json; '' turns it off)")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="search override KEY=VALUE (problem key, algo.K, run.K)")
    ] = None,
    task_set: Annotated[
        list[str] | None,
        typer.Option("--task-set", help="setting of every step KEY=VALUE (what defines the items)"),
    ] = None,
) -> None:
    """A recipe end to end: the base model, SFT start and search, scored on fresh items with a paired test."""
    import subprocess

    require("llm", "gfo learn")
    from gfo_llm.learn import learn as run_learn
    from gfo_llm.learn import options_from

    options = options_from(
        recipe=recipe, json=json_ or Path("runs") / f"learn-{Path(recipe).stem}" / "result.json",
        method=method, out=out, model=model, items=items, generations=generations, popsize=popsize,
        algo=algo, sft=sft, sft_limit=sft_limit, sft_lr=sft_lr, start=start, completions=completions,
        seed=seed, fresh=fresh, eval_cache=eval_cache, sets=tuple(set_ or ()),
        task_sets=tuple(task_set or ()),
    )  # fmt: skip
    try:
        run_learn(options, say=lambda line: print(line, flush=True))
    except subprocess.CalledProcessError as exc:  # the step printed its own error above
        command = " ".join(map(str, exc.cmd))
        typer.echo(f"error: step failed with exit code {exc.returncode}: {command}", err=True)
        raise typer.Exit(exc.returncode if exc.returncode > 0 else 1) from None


def _recipes() -> list[str]:
    from gfo_llm.recipe import recipe_names

    return recipe_names()
