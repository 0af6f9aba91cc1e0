"""`gfo learn`: one recipe (`gfo_llm.recipe`) end to end, proved on fresh items with a paired test.

Steps, each a real `gfo` command in a subprocess (printed, and kept in the result's `steps`):
  0. `gfo eval` of the base model on `items` FRESH items that no step trains or selects on
     (`gfo_llm.evaluate.fresh_items`);
  1. `gfo sft` on the task's first `sft_limit` training items (a recipe without a warm start, or
     `sft=False`, starts from the PiSSA init: the base model itself): the start;
  2. the search from that start: `gfo run` (ES), or TRL's GRPO (`method="grpo"`,
     `python -m gfo_llm.grpo`) at the same number of training completions;
  3. `gfo eval` of the start and the final adapter on the same fresh items;
  4. paired statistics (exact McNemar, Wilson intervals) of final vs start and final vs base, on
     the items the training stream does not hold (`gfo_llm.evaluate.unseen`), and the task's own
     breakdown of the answers (`Task.breakdown`: for instruct, the checks, topic, loops, length).
Accuracy is exact answers (items whose reward is 1; for instruct, strict compliance). Writes the
result as JSON and a PNG of the search's held-out curve beside the fresh items' accuracies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gfo
import gfo_llm
from gfo.errors import GfoError
from gfo_llm.evaluate import fresh_items, records_token_ids, unseen
from gfo_llm.recipe import Recipe, load_recipe

ADAPTER_SHAPE = ("target_modules", "rank")  # search settings that the SFT (and GRPO) step takes too


def scoring_code(task: str) -> tuple[Path, ...]:
    """What an eval's numbers depend on: gfo's and gfo_llm's code and the package of the task's own
    module (a docs change keeps the cached evals)."""
    from gfo.registry import PROBLEMS

    module = sys.modules[PROBLEMS.get(task).__module__].__name__.split(".")[0]
    packages = [gfo, gfo_llm, importlib.import_module(module)]
    # A task that is one top-level module is that file, not the folder it lies in (site-packages).
    return tuple(Path(m.__path__[0]) if hasattr(m, "__path__") else Path(str(m.__file__)) for m in packages)


@dataclass(frozen=True)
class LearnOptions:
    """What `gfo learn` runs: a recipe and the caller's changes to it (None: the recipe's own)."""

    recipe: str = "quickstart"  # a shipped recipe's name, or a .toml file
    json: Path = Path("runs/learn/result.json")  # the result; the PNG goes beside it
    method: str = "es"  # es: the recipe's search; grpo: TRL's GRPO at the same completions
    out: Path | None = None  # folder of the steps (default: `json` less its suffix)
    model: str | None = None  # problem.model of every step
    items: int | None = None  # fresh items scored
    generations: int | None = None
    popsize: int | None = None
    algo: str | None = None
    sft: bool | None = None  # warm start by SFT
    sft_limit: int | None = None
    sft_lr: float | None = None
    start: str | None = None  # an existing warm-start adapter instead of the SFT step
    completions: int | None = None  # GRPO's training completions
    seed: int = 0
    fresh: str | None = None  # seed or offset (`gfo_llm.evaluate.fresh_items`)
    eval_cache: Path | None = None  # reusable evals (default: eval-cache beside `json`; "" turns it off)
    sets: tuple[str, ...] = ()  # search overrides KEY=VALUE
    task_sets: tuple[str, ...] = ()  # settings of every step KEY=VALUE (what defines the items)


def pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    """`KEY=VALUE` strings as a dict (a leading `problem.` dropped), each malformed one refused."""
    out: dict[str, str] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise GfoError(f"{flag} takes KEY=VALUE, e.g. constraints=punctuation:no_comma; got {text!r}")
        out[key.removeprefix("problem.")] = value
    return out


def as_text(value: Any) -> str:
    """A setting as `--set` writes it: a list joined by commas, a bool lowercase, anything else as it is."""
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def sets(values: dict[str, Any]) -> list[str]:
    """`--set` arguments: `KEY` means `problem.KEY`, `algo.KEY` and `run.KEY` stay as they are."""
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", f"{key if '.' in key else 'problem.' + key}={as_text(value)}"]
    return out


def grpo_settings(search: dict[str, Any]) -> dict[str, Any]:
    """The search settings (less `algo.*`) that the GRPO step takes: the problem's, not ES's own
    spread, population batch or fitness (GRPO trains on the reward), nor `run.*`."""
    own = ("stdev", "batch_size", "fitness")
    return {
        k: v for k, v in search.items() if k.removeprefix("problem.") not in own and not k.startswith("run.")
    }


@dataclass
class Plan:
    """The recipe with the caller's changes applied, checked before any step runs."""

    recipe: Recipe
    every: dict[str, Any]  # problem settings of every step (what defines the items)
    search: dict[str, Any]  # settings of the search alone
    algo: str
    popsize: int
    generations: int
    items: int
    fresh: str
    notes: list[str]
    token_ids: bool  # whether the steps' engine records answer token ids: the KL to base needs them


def plan(options: LearnOptions) -> Plan:
    """The steps' settings; every bad option is a `GfoError` here, before minutes of work."""
    recipe = load_recipe(options.recipe)
    notes: list[str] = []
    if options.method not in ("es", "grpo"):
        raise GfoError(f"--method must be es or grpo; got {options.method!r}")
    every = {**recipe.problem, **pairs(options.task_sets, "--task-set")}
    every |= {"model": options.model} if options.model else {}
    search = dict(recipe.search)
    algo = options.algo or recipe.algo
    if algo != recipe.algo:
        # A recipe's algo.* settings are its own algorithm's (PGPE's ClipUp speed): `gfo run` would
        # refuse them for another, which keeps its defaults unless --set says otherwise.
        dropped = {k: search.pop(k) for k in list(search) if k.startswith("algo.")}
        if dropped:
            notes.append(f"--algo {algo}: the recipe's {recipe.algo} settings {dropped} do not apply")
    overrides = pairs(options.sets, "--set")
    search.update(overrides)
    fitness = search.get("fitness", "reward")
    if options.method == "grpo" and fitness == "likelihood" and options.completions is None:
        raise GfoError(
            f"the {options.recipe} recipe's ES scores reference answers and generates no completions, so "
            "GRPO has no equal budget to take from it; give one with --completions N (e.g. 2048)"
        )
    if options.method == "es" and options.completions is not None:
        raise GfoError("--completions is GRPO's budget; ES's is --popsize x --set batch_size x --generations")
    fresh = options.fresh or recipe.fresh
    for flag, value in (("--items", options.items), ("--popsize", options.popsize),
                        ("--generations", options.generations)):  # fmt: skip
        if value is not None and value < 1:
            raise GfoError(f"{flag} must be at least 1; got {value}")
    items = recipe.items if options.items is None else options.items
    problem_config = check_settings(recipe.task, algo, every, search)
    fresh_items(recipe.task, {**every, **search}, items, fresh)  # refuses seed for a task without one
    sft = (recipe.sft if options.sft is None else options.sft) and not options.start
    if options.method == "grpo" or sft:
        from gfo_llm.extras import require

        require("grpo", "gfo learn's " + ("GRPO step" if options.method == "grpo" else "SFT start"))
    return Plan(
        recipe,
        every,
        search,
        algo,
        recipe.popsize if options.popsize is None else options.popsize,
        recipe.generations if options.generations is None else options.generations,
        items,
        fresh,
        notes,
        records_token_ids(problem_config),
    )


def check_settings(task: str, algo: str, every: dict[str, Any], search: dict[str, Any]) -> Any:
    """Build the problem's, the algorithm's and the run's configs from the steps' settings, so that a
    bad key or value is a `ConfigError` before the first step, not minutes into the search; returns
    the problem's."""
    from gfo import config as cfg
    from gfo.registry import ALGORITHMS, PROBLEMS

    sections: dict[str, dict[str, Any]] = {"problem": {}, "algo": {}, "run": {}}
    for key, value in {**every, **search}.items():
        section, name = key.split(".", 1) if "." in key else ("problem", key)
        if section not in sections:
            raise GfoError(f"--set {key}: a setting is KEY (the problem's), problem.KEY, algo.KEY or run.KEY")
        sections[section][name] = value
    cfg.build(ALGORITHMS.get(algo).Config, sections["algo"], "algo")
    cfg.build(cfg.RunConfig, sections["run"], "run")
    return cfg.build(PROBLEMS.get(task).Config, sections["problem"], "problem")


def learn(options: LearnOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the plan's steps; returns the result written to `options.json`."""
    from gfo.stats import paired_summary

    p = plan(options)
    for note in p.notes:
        say(note)
    recipe, search = p.recipe, dict(p.search)
    out = options.out or options.json.with_suffix("")
    out.mkdir(parents=True, exist_ok=True)
    gfo_cli = [sys.executable, "-m", "gfo.cli"]
    common = sets(p.every)
    # The adapter's shape is the same in every step: the SFT adapter is the search's start.
    shape = {k: search.pop(k) for k in ADAPTER_SHAPE if k in search}
    common += sets(shape)
    fresh = fresh_items(recipe.task, {**p.every, **search}, p.items, p.fresh)
    offset, seed = (fresh, []) if fresh[0] == "--offset" else ([], fresh)
    steps: list[dict[str, Any]] = []
    scored: dict[str, Path] = {}
    eval_s = 0.0
    code = scoring_code(recipe.task)
    cache: Path | None = (
        options.json.parent / "eval-cache" if options.eval_cache is None else options.eval_cache
    )
    cache = None if str(cache) in ("", ".") else cache

    def step(command: list[str]) -> float:
        say("$ " + " ".join(command))
        started = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - started
        steps.append({"command": " ".join(command), "wall_s": round(seconds, 1)})
        return seconds

    def score(name: str, adapter: str | None) -> None:
        nonlocal eval_s
        directory = out / f"eval-{name}"
        # No --quiet: a 500-item eval takes minutes; `gfo eval` shows a bar, or a line per chunk in a log.
        command = [*gfo_cli, "eval", "--problem", recipe.task, "--limit", str(p.items)]
        command += [*offset, *common, *seed] + (["--adapter", adapter] if adapter else [])
        command += ["--kl-to", "base"] if adapter and p.token_ids else []
        key = eval_key(command, adapter, code)
        hit = cache / key if cache is not None else None
        if hit is not None and (hit / "completions.jsonl").is_file():
            say(f"{name}: reusing the eval in {hit} (same command and adapter files)")
            shutil.rmtree(directory, ignore_errors=True)
            shutil.copytree(hit, directory)
            steps.append({"command": " ".join(command), "wall_s": 0.0, "reused": str(hit)})
        else:
            eval_s += step([*command, "--out", str(directory)])
            if hit is not None and name != "final":
                shutil.rmtree(hit, ignore_errors=True)
                shutil.copytree(directory, hit)
        scored[name] = directory
        rows = correct(records(directory))
        say(f"{name}: accuracy {sum(rows) / len(rows):.3f} on fresh items")

    score("base", None)  # the "before" of everything that follows

    sft_s, sft_reused = 0.0, None
    start: str | None
    if options.start:
        adapter_dir = Path(options.start).resolve()
        start = str(adapter_dir)
        # An adapter made by `gfo sft` (an earlier run's start): its training time still counts.
        made_by = adapter_dir.parent / "sft.json"
        if made_by.is_file():
            sft_s, sft_reused = float(json.loads(made_by.read_text()).get("wall_s", 0.0)), str(made_by)
            say(f"start: {start}, trained by SFT in {sft_s / 60:.1f} min ({made_by}), counted in wall_s")
    elif not (recipe.sft if options.sft is None else options.sft):
        start = None  # PiSSA's centre is the base model exactly (docs/llm.md)
    else:
        sft_dir = out / "sft"
        command = [*gfo_cli, "sft", "--problem", recipe.task, "--out", str(sft_dir), *common]
        limit = options.sft_limit or recipe.sft_limit
        command += ["--lr", str(options.sft_lr or recipe.sft_lr), "--epochs", str(recipe.sft_epochs)]
        command += ["--limit", str(limit)] if limit else []
        made_by = sft_dir / "sft.json"
        if options.method == "es" and stopped(out / "es", p.generations) and made_by.is_file():
            # the stopped search started from this adapter: a new SFT would change its start
            sft_s, sft_reused = float(json.loads(made_by.read_text()).get("wall_s", 0.0)), str(made_by)
            say(f"start: the stopped search's SFT adapter in {sft_dir}, reused")
        else:
            sft_s = step(command)
        start = str((sft_dir / "adapter").resolve())

    search_dir = out / options.method
    algo_sets = {k: v for k, v in search.items() if k.startswith("algo.")}
    problem_sets = {k: v for k, v in search.items() if not k.startswith("algo.")}
    if start:
        problem_sets["init_adapter"] = start
    batch = int(problem_sets.get("batch_size", 8))
    budget = options.completions or p.popsize * batch * p.generations
    references: dict[str, float] = {}
    curve: list[dict[str, float]] = []
    if options.method == "es":
        # A search stopped part way (Ctrl-C, a kill) continues from its checkpoint; a finished one
        # is run again.
        resume = stopped(search_dir, p.generations)
        if resume:
            say(f"search: continuing the stopped run in {search_dir} from its checkpoint")
        command = [
            *gfo_cli, "run", "--algo", p.algo, "--problem", recipe.task,
            "--popsize", str(p.popsize), "--generations", str(p.generations), "--seed", str(options.seed),
            "--out", str(search_dir), "--resume" if resume else "--force",
            *common, *sets(problem_sets), *sets(algo_sets),
        ]  # fmt: skip
        search_s = step(command)
        summary = json.loads((search_dir / "summary.json").read_text())
        counters = summary.get("counters", {})
        completions, tokens = counters.get("completions"), counters.get("generated_tokens")
        # problem.fitness=likelihood generates nothing to train on: it scores references.
        references = {k: counters[k] for k in ("scored_references", "reference_tokens") if k in counters}
        curve = heldout_curve(search_dir / "metrics.jsonl", summary)
    else:
        command = [
            sys.executable, "-m", "gfo_llm.grpo", "--problem", recipe.task, "--completions", str(budget),
            "--out", str(search_dir), "--seed", str(options.seed), "--skip-before",
            *common, *sets(grpo_settings(problem_sets)),
        ]  # fmt: skip
        search_s = step(command)
        result = json.loads((search_dir / "result.json").read_text())
        completions, tokens = result.get("completions_generated"), result.get("tokens_generated")
    final = search_dir / "adapter"

    if start is not None:
        score("start", start)
    else:
        scored["start"] = scored["base"]
    score("final", str(final))
    rows = {name: records(folder) for name, folder in scored.items()}
    keep = (
        unseen(
            recipe.task, {k: as_text(v) for k, v in p.every.items()}, [r["example"] for r in rows["final"]]
        )
        if p.fresh == "seed"
        else None
    )
    base, begin, end = (correct(rows[k], keep) for k in ("base", "start", "final"))
    # KL from the base model on each model's own fresh answers, per answer token (the base's is 0).
    kl = {name: kl_per_token(rows[name], keep) if p.token_ids else None for name in ("start", "final")}
    vs_start, vs_base = paired_summary(end, begin), paired_summary(end, base)

    kib = 1024 if sys.platform != "darwin" else 2**20  # ru_maxrss is in bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib
    result_json: dict[str, Any] = {
        "task": recipe.task,
        "recipe": options.recipe,
        "method": options.method,
        "settings": {
            "algo": p.algo,
            "popsize": p.popsize,
            "generations": p.generations,
            "problem": p.every,
            "search": {**search, **shape},
            "start": start or "pissa",
            "fresh": p.fresh,
            "budget_completions": budget,
        },
        "base_acc": vs_base["acc_b"],
        "start_acc": vs_start["acc_b"],
        "final_acc": vs_start["acc_a"],
        "n_items": len(end),
        "dropped_seen_items": 0 if keep is None else keep.count(False),
        "p_final_vs_start": vs_start["p_value"],
        "p_final_vs_base": vs_base["p_value"],
        "p_start_vs_base": paired_summary(begin, base)["p_value"],
        "kl_to_base": kl,
        "final_vs_start": vs_start,
        "final_vs_base": vs_base,
        "completions": completions,
        "tokens": tokens,
        **references,
        "wall_s": round(sft_s + search_s, 1),
        "sft_wall_s": round(sft_s, 1),
        "sft_reused": sft_reused,  # the sft.json whose wall time sft_wall_s is, when --start reused it
        "search_wall_s": round(search_s, 1),
        "eval_wall_s": round(eval_s, 1),
        "peak_rss_mb": round(peak, 1),
        "adapter": str(final),
        "heldout_curve": curve,
        "commit": git_commit(),
        "dtype": str(json.loads((scored["final"] / "eval.json").read_text()).get("dtype", "?")),
        "cpu": cpu_model(),
        "steps": steps,
    }
    breakdown = task_breakdown(recipe.task, p.every, {name: rows[name] for name in scored}, keep)
    if breakdown is not None:
        result_json["breakdown"] = breakdown
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(result_json, indent=2))
    from gfo_llm.learn_plot import plot

    plot(result_json, options.json.with_suffix(".png"))
    for line in final_lines(result_json):
        say(line)
    return result_json


def final_lines(result: dict[str, Any]) -> list[str]:
    """What `gfo learn` prints last: the fresh items' accuracies and p-values, the wall time, and
    the task's breakdown of base and final answers where it has one."""
    lines = [
        f"{result['recipe']} ({result['method']}): base {result['base_acc']:.3f}  "
        f"start {result['start_acc']:.3f}  "
        f"final {result['final_acc']:.3f} on {result['n_items']} fresh items; p(final vs start) = "
        f"{result['p_final_vs_start']:.2g}, p(final vs base) = {result['p_final_vs_base']:.2g}; "
        f"{result['wall_s'] / 60:.1f} min (SFT {result['sft_wall_s'] / 60:.1f} + search "
        f"{result['search_wall_s'] / 60:.1f}); KL to the base model per answer token: "
        + (
            f"start {kl['start']:.3f}, final {kl['final']:.3f}"
            if (kl := result["kl_to_base"])["final"] is not None
            else "not measured (the engine records no token ids)"
        )
    ]
    breakdown = result.get("breakdown")
    if breakdown and "topic_named" in breakdown["base"]:
        base, last = breakdown["base"], breakdown["final"]
        lines.append(
            "answers naming their topic's word: base {}/{}, final {}/{}".format(
                *base["topic_named"], *last["topic_named"]
            )
            + "; looping: base {}/{}, final {}/{}".format(*base["repetitive"], *last["repetitive"])
            + f"; median words: base {base['median_words']}, final {last['median_words']}"
        )
    return lines


def task_breakdown(
    task: str, every: dict[str, Any], rows: dict[str, list[dict[str, Any]]], keep: list[bool] | None
) -> dict[str, Any] | None:
    """`Task.breakdown` of each scored model's answers on the kept items; None where the task has none."""
    from gfo.config import build
    from gfo.registry import PROBLEMS

    cls: Any = PROBLEMS.get(task)
    instance = cls.task_class(build(cls.Config, {k: as_text(v) for k, v in every.items()}, "problem"))
    out: dict[str, Any] = {}
    for name, records_ in rows.items():
        kept = records_ if keep is None else [r for r, k in zip(records_, keep, strict=True) if k]
        texts = [r["completion"] if isinstance(r["completion"], str) else "" for r in kept]
        report = instance.breakdown(texts, [r["example"] for r in kept])
        if report is None:
            return None
        out[name] = report
    return json.loads(json.dumps(out))  # tuples as lists, as the file holds them


def stopped(run_dir: Path, generations: int) -> bool:
    """Whether `run_dir` holds a search's checkpoint short of `generations`."""
    from gfo import checkpoint

    if not (run_dir / checkpoint.NAME).is_file():
        return False
    summary = run_dir / "summary.json"
    done = json.loads(summary.read_text()).get("generations", 0) if summary.is_file() else 0
    return int(done) < generations


def kl_per_token(rows: list[dict[str, Any]], keep: list[bool] | None) -> float:
    """The KL from the base model summed over the kept answers' tokens, per token (0 for the base
    model itself, whose eval records none)."""
    kept = rows if keep is None else [r for r, k in zip(rows, keep, strict=True) if k]
    if not kept or "kl" not in kept[0]:
        return 0.0
    return sum(float(r["kl"]) for r in kept) / sum(len(r["token_ids"]) for r in kept)


def files_digest(digest: Any, tops: tuple[Path, ...]) -> None:
    """Feed the names and bytes of every file under `tops`, in order, to `digest`."""
    for top in tops:
        for path in sorted(top.rglob("*")) if top.is_dir() else [top]:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(top.parent)).encode() + path.read_bytes())


def eval_key(command: list[str], adapter: str | None, code: tuple[Path, ...]) -> str:
    """What makes two fresh-item evals the same: the command (less the interpreter), the bytes of the
    code that scores (not the commit: a docs commit keeps the evals) and those of the adapter's files."""
    digest = hashlib.sha256(json.dumps(command[1:]).encode())
    files_digest(digest, code)
    if adapter:
        files_digest(digest, (Path(adapter),))
    return digest.hexdigest()[:16]


def records(eval_dir: Path) -> list[dict[str, Any]]:
    with open(eval_dir / "completions.jsonl") as f:
        return [json.loads(line) for line in f]


def correct(rows: list[dict[str, Any]], keep: list[bool] | None = None) -> list[bool]:
    right = [float(r["reward"]) >= 1.0 for r in rows]
    return right if keep is None else [ok for ok, k in zip(right, keep, strict=True) if k]


def heldout_curve(metrics: Path, summary: dict[str, Any]) -> list[dict[str, float]]:
    """(training completions so far, held-out mean reward of centre and generation best) per
    measurement; a `problem.fitness=likelihood` search generates nothing: its x is references scored."""
    curve: list[dict[str, float]] = []
    if summary.get("heldout_initial") is not None:
        curve.append(
            {"completions": 0.0, "center": summary["heldout_initial"], "best": summary["heldout_initial"]}
        )
    with open(metrics) as f:
        for line in f:
            record = json.loads(line)
            if "heldout" in record:
                done = float(record.get("completions_total", record.get("scored_references_total", 0.0)))
                curve.append({"completions": done, **record["heldout"]})
    return curve


def git_commit() -> str:
    """The commit of the checkout gfo runs from, or "unknown" (an installed wheel)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(gfo_llm.__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    from gfo_llm.model import cpu_description

    return cpu_description()


def options_from(**values: Any) -> LearnOptions:
    """`LearnOptions` from keyword values, None meaning the default (what the CLI passes)."""
    known = {f.name for f in dataclasses.fields(LearnOptions)}
    return LearnOptions(**{k: v for k, v in values.items() if k in known and v is not None})
