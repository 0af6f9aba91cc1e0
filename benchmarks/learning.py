"""The learning harness: one named recipe end to end, proved on fresh items with a paired test.

    python benchmarks/learning.py --recipe arithmetic --json runs/learning/arithmetic.json
    python benchmarks/learning.py --recipe arithmetic --method grpo --completions 2048 --json FILE
    python benchmarks/learning.py --recipe arithmetic-reward --no-sft --set problem.stdev=0.5 --json FILE

Steps, each a real `gfo` command in a subprocess (printed, and stored in the JSON):
  1. `gfo sft` on the task's first `sft_limit` training items (skipped by `--no-sft`, and in recipes
     without a warm start unless `--sft`): the start;
  2. the search from that start: `gfo run` (ES, `--method es`) or `benchmarks/grpo_baseline.py`
     (`--method grpo`) at the same number of training completions (`--completions` where ES
     scores reference answers instead, `problem.fitness=likelihood`);
  3. `gfo eval` of the base model, the start and the final adapter on `--items` FRESH items that no
     step saw or selected on: for generated tasks the test stream of another `problem.data_seed`,
     for GSM8K the test items after the ones the search's held-out evaluation used;
  4. paired statistics (exact McNemar, Wilson intervals) of final vs start and final vs base.
Accuracy is exact answers (items whose reward is 1), for instruct strict compliance. Writes the
JSON (`--json`), and a PNG of held-out accuracy against training completions next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ADAPTER_SHAPE = ("target_modules", "rank")  # --set keys that go to the SFT (and GRPO) step too
FRESH_SEED = 7  # data_seed of the fresh test stream of generated tasks (training uses the default 0)


@dataclass(frozen=True)
class Recipe:
    """A documented learning recipe (docs/learning.md): warm start, search, and how it is scored."""

    task: str
    algo: str = "pgpe"
    popsize: int = 16
    generations: int = 20
    problem: dict[str, Any] = field(default_factory=dict)  # --set problem.KEY=VALUE of every step
    search: dict[str, Any] = field(default_factory=dict)  # --set of the search only (algo.*, problem.*)
    sft: bool = True  # a warm start by SFT (False: the PiSSA start, the base model itself)
    sft_limit: int | None = 1024  # None: every training item
    sft_lr: float = 1e-3
    sft_epochs: float = 1.0
    items: int = 500
    generated: bool = True  # a task with a data_seed (arithmetic, instruct); GSM8K is not
    fresh: str = "seed"  # fresh items: another data_seed's test stream, or the test split past `eval_limit`


# SFT on worked references (one line per operation) gives the start; PGPE then searches the SVD
# of that adapter (ESSA). Spread 0.1: the SFT adapter's singular values are 0.07 to 0.7. The
# exact-answer reward as fitness: sixteen runs from 64- to 1,024-item starts moved fresh accuracy
# by -2.5 to +1.6 points (docs/learning.md, sessions 1 to 11); kept to rerun their commands.
ARITHMETIC_REWARD = Recipe(
    task="arithmetic",
    generations=28,
    problem={"max_new_tokens": 64},
    search={"batch_size": 32, "eval_every": 5, "eval_limit": 64, "stdev": 0.1, "algo.max_speed": 0.3},
)

# The same search on the reference answers' log-probability (ES on the SFT loss, forward passes
# only), from a 64-item SFT start (the answer format, few right sums: -0.615 nats per reference
# token, where a 256-item SFT is at -0.229), 64 references a generation (where one generation's
# ranking carries to other items, split-half rho +0.48; at 16 it is -0.03), 70 generations in the
# 45-minute budget: 0.140 -> 0.224 on 487 fresh items, p = 2.5e-10 (run 25, session 12). 520 fresh
# items: about 2.6% of them repeat a training sum and are dropped, which leaves 500 or more.
ARITHMETIC = dataclasses.replace(
    ARITHMETIC_REWARD,
    generations=70,
    sft_limit=64,
    items=520,
    search={**ARITHMETIC_REWARD.search, "fitness": "likelihood", "batch_size": 64, "eval_every": 10},
)

# One instruction, "no commas", from the base model (no warm start): a behaviour one direction of
# the SVD space can raise, where ES doubles compliance in 12 generations (docs/learning.md, session 5).
# One parameterless instruction has 1,616 prompts, so fresh items are the test split past the
# search's 64 selection items (another seed would repeat training prompts).
NO_COMMA = Recipe(
    task="instruct",
    generations=12,
    sft=False,
    problem={
        "max_new_tokens": 96,
        "constraints": "punctuation:no_comma",
        "constraints_per_prompt": 1,
        "train_size": 1000,
        "test_size": 564,
    },
    search={"batch_size": 16, "eval_every": 5, "eval_limit": 64, "stdev": 0.25, "algo.max_speed": 0.75}
    | {"run.select": "center"},  # the final centre, not the best of a few looks at 64 items
    fresh="offset",
)

# No commas, scored also on naming the topic and on not looping (docs/tasks.md: the cheap ways to drop
# commas), searched in the lora space: every entry of the LoRA factors, where 3,072 completions
# raised guarded compliance 0.112 -> 0.552 (run 14) and the SVD space only to 0.148 (run 13).
GUARDED = dataclasses.replace(
    NO_COMMA,
    problem={**NO_COMMA.problem, "on_topic": True, "max_repetition": 0.5},
    search={**NO_COMMA.search, "space": "lora", "stdev": 0.02, "algo.max_speed": 2.5},
)

RECIPES = {
    "arithmetic": ARITHMETIC,
    "arithmetic-reward": ARITHMETIC_REWARD,
    "no-comma": NO_COMMA,
    "guarded": GUARDED,
    # `make run`: the guarded recipe cut to 8 generations, scored on 300 fresh prompts, the held-out
    # centre shown at the start and after generations 3 and 7, searched by diagonal CMA-ES at its own
    # step rules: in the same 2,048 completions it took 0.137 to 0.580, PGPE to 0.363 and SNES to
    # 0.430 (paired against PGPE p = 2.5e-08; session 8). 16 minutes on a 2-core CPU.
    "quickstart": dataclasses.replace(
        GUARDED,
        algo="sep-cmaes",
        generations=8,
        items=300,
        search={k: v for k, v in GUARDED.search.items() if not k.startswith("algo.")} | {"eval_every": 4},
    ),
    "instruct": Recipe(
        task="instruct",
        sft=False,  # the witness answers are formulaic; run 4 and its GRPO pair start from the base model
        problem={"max_new_tokens": 96},
        search={"batch_size": 32, "eval_every": 5, "eval_limit": 64, "stdev": 0.25, "algo.max_speed": 0.75},
    ),
    # ESSA's recipe. An SFT start's singular values are 0.02 to 0.43 (the 512-item SFT of session 5;
    # arithmetic's are 0.07 to 0.7), so the search takes arithmetic's spread and step, not the PiSSA
    # start's 0.25. On a 2-core CPU `--sft-limit 512 --sft-lr 1e-3` fits the SFT in 20 minutes.
    "gsm8k": Recipe(
        task="gsm8k",
        popsize=8,
        generations=8,
        problem={"max_new_tokens": 256},
        search={"batch_size": 16, "eval_every": 5, "eval_limit": 64, "stdev": 0.1, "algo.max_speed": 0.3},
        sft_limit=1495,
        sft_lr=1e-4,
        generated=False,
        fresh="offset",
    ),
}


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"takes KEY=VALUE, e.g. constraints=punctuation:no_comma; got {text!r}"
        )
    return key.removeprefix("problem."), value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--recipe", choices=sorted(RECIPES), default="arithmetic")
    p.add_argument("--method", choices=("es", "grpo"), default="es")
    p.add_argument("--json", type=Path, required=True, help="result file (the PNG goes next to it)")
    p.add_argument("--out", type=Path, default=None, help="folder for the runs (default: next to --json)")
    p.add_argument("--model", default=None, help="model (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--items", type=int, default=None, help="fresh items scored (default: the recipe's)")
    p.add_argument("--generations", type=int, default=None)
    p.add_argument("--popsize", type=int, default=None)
    p.add_argument("--algo", default=None)
    p.add_argument(
        "--sft",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="warm-start by SFT, or (--no-sft) start from the PiSSA init: the base model (default: recipe's)",
    )
    p.add_argument("--sft-limit", type=int, default=None)
    p.add_argument("--sft-lr", type=float, default=None)
    p.add_argument(
        "--start",
        default=None,
        help="an existing warm-start adapter instead of running SFT (one that `gfo sft` made: its sft.json's"
        " training time counts in wall_s)",
    )
    p.add_argument(
        "--completions",
        type=int,
        default=None,
        help="GRPO's training completions (default: the ES search's popsize x batch x generations; a"
        " recipe with problem.fitness=likelihood scores references and generates none, so give it here)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fresh",
        choices=("seed", "offset"),
        default=None,
        help="where the fresh items come from (default: the recipe's): 'seed', the test stream of another"
        " data_seed, or 'offset', the test split past the search's selection items (GSM8K; a generated"
        " task whose item universe is small, where another seed would repeat training items)",
    )
    p.add_argument(
        "--eval-cache",
        type=Path,
        default=None,
        help="folder of earlier fresh-item evals to reuse when command and adapter files are the same"
        " (default: eval-cache beside --json; --eval-cache '' turns it off)",
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="search override KEY=VALUE (repeatable)"
    )
    p.add_argument(
        "--task-set",
        dest="task_sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_pair,
        help="problem setting of every step, for what defines the items (e.g. constraints=punctuation:"
        "no_comma): the evals, the SFT, the search and the check for fresh items training saw (repeatable)",
    )
    args = p.parse_args(argv)
    recipe = RECIPES[args.recipe]
    if args.fresh == "seed" and not recipe.generated:
        p.error(f"--fresh seed needs a generated task; {recipe.task} has no data_seed, use --fresh offset")
    overrides = {
        k.removeprefix("problem."): v for k, v in (o.split("=", 1) for o in args.overrides if "=" in o)
    }
    fitness = overrides.get("fitness", recipe.search.get("fitness", "reward"))
    if args.method == "grpo" and fitness == "likelihood" and args.completions is None:
        p.error(
            f"the {args.recipe} recipe's ES scores reference answers and generates no completions, so GRPO"
            " has no equal budget to take from it; give one with --completions N (e.g. 2048)"
        )
    if args.method == "es" and args.completions is not None:
        p.error("--completions is GRPO's budget; ES's is --popsize x --set batch_size x --generations")
    return args


def split_size(task: str, settings: dict[str, Any]) -> int | None:
    """The test split's size of a generated task (`problem.test_size`), None for a task without one."""
    from gfo.registry import PROBLEMS

    defaults = {f.name: f.default for f in dataclasses.fields(PROBLEMS.get(task).Config)}
    return int(settings.get("test_size", defaults["test_size"])) if "test_size" in defaults else None


def as_text(value: Any) -> Any:
    """A setting as `--set` writes it: a list joined by commas, a bool lowercase, anything else as it is."""
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def sets(values: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", key if "=" in key else f"{key if '.' in key else 'problem.' + key}={as_text(value)}"]
    return out


def grpo_settings(search: dict[str, Any]) -> dict[str, Any]:
    """The search settings (less `algo.*`) that the GRPO step takes: the problem's, not ES's own
    spread, population batch or fitness (GRPO trains on the reward), nor `run.*` (how `gfo run`
    keeps its adapter)."""
    own = ("stdev", "batch_size", "fitness")
    return {
        k: v for k, v in search.items() if k.removeprefix("problem.") not in own and not k.startswith("run.")
    }


def run(command: list[str], log: list[dict[str, Any]]) -> float:
    """Run one step (its output to our stdout) and record it; returns its wall time."""
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    log.append({"command": " ".join(command), "wall_s": round(seconds, 1)})
    return seconds


SCORING_CODE = ("gfo", "gfo_llm", "problems", "pyproject.toml")  # what an eval's numbers depend on


def files_digest(digest: Any, root: Path, names: tuple[str, ...] | None = None) -> None:
    """Feed the names and bytes of every file under `root` (or its `names`) to `digest`, in order."""
    tops = [root / name for name in names] if names else [root]
    for top in tops:
        for path in sorted(top.rglob("*")) if top.is_dir() else [top]:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode() + path.read_bytes())


def eval_key(command: list[str], adapter: str | None) -> str:
    """What makes two fresh-item evals the same: the command (less --out), the bytes of the code
    that scores (not the commit: a docs commit keeps the evals) and those of the adapter's files."""
    digest = hashlib.sha256(json.dumps(command[1:]).encode())
    files_digest(digest, ROOT, SCORING_CODE)
    if adapter:
        files_digest(digest, Path(adapter))
    return digest.hexdigest()[:16]


def records(eval_dir: Path) -> list[dict[str, Any]]:
    with open(eval_dir / "completions.jsonl") as f:
        return [json.loads(line) for line in f]


def correct(eval_dir: Path, keep: list[bool] | None = None) -> list[bool]:
    rows = [float(r["reward"]) >= 1.0 for r in records(eval_dir)]
    return rows if keep is None else [ok for ok, k in zip(rows, keep, strict=True) if k]


def unseen(task: str, eval_dir: Path, settings: dict[str, Any]) -> list[bool]:
    """Which scored items are in neither split of the training stream (default data_seed).

    A generated task's other seed can repeat an item by chance (level-1 arithmetic has about 20k
    distinct two-term sums); such an item is dropped from the paired statistics. `settings` are the
    problem settings every step shares (those that define the items among them).
    """
    from gfo.config import build
    from gfo.registry import PROBLEMS

    cls: Any = PROBLEMS.get(task)
    values = {k: as_text(v) for k, v in settings.items()}
    training = cls.task_class(build(cls.Config, values, "problem"))
    seen = {
        json.dumps(dict(ex), sort_keys=True) for split in ("train", "test") for ex in training.examples(split)
    }
    return [json.dumps(r["example"], sort_keys=True) not in seen for r in records(eval_dir)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from gfo.stats import paired_summary

    recipe = RECIPES[args.recipe]
    out = args.out or args.json.with_suffix("")
    out.mkdir(parents=True, exist_ok=True)
    gfo = [sys.executable, "-m", "gfo.cli"]
    every = {**recipe.problem, **dict(args.task_sets)}
    every |= {"model": args.model} if args.model else {}
    common = sets(every)
    log: list[dict[str, Any]] = []
    items = args.items or recipe.items

    search = dict(recipe.search)
    algo = args.algo or recipe.algo
    if algo != recipe.algo:
        # A recipe's algo.* settings are its own algorithm's (PGPE's ClipUp speed): `gfo run` would
        # refuse them for another, which keeps its defaults unless --set says otherwise.
        dropped = {k: search.pop(k) for k in list(search) if k.startswith("algo.")}
        if dropped:
            print(f"--algo {algo}: the recipe's {recipe.algo} settings {dropped} do not apply", flush=True)
    search.update(dict(o.split("=", 1) for o in args.overrides))
    # The adapter's shape is the same in every step: the SFT adapter is the search's start.
    shape = {k: search.pop(k) for k in ADAPTER_SHAPE if k in search}
    common += sets(shape)
    by_seed = (args.fresh or recipe.fresh) == "seed"
    fresh = ["--set", f"problem.data_seed={FRESH_SEED}"] if by_seed else []
    drawn = split_size(recipe.task, every)
    if by_seed and drawn is not None and items > drawn:
        # The fresh stream's first items are the same at any test_size: draw as many as asked.
        fresh += ["--set", f"problem.test_size={items}"]
    offset = [] if by_seed else ["--offset", str(int(search.get("eval_limit", 64)))]
    scored: dict[str, Path] = {}
    eval_s = 0.0

    cache = args.json.parent / "eval-cache" if args.eval_cache is None else args.eval_cache
    cache = None if str(cache) in ("", ".") else cache

    def score(name: str, adapter: str | None) -> None:
        nonlocal eval_s
        directory = out / f"eval-{name}"
        command = [*gfo, "eval", "--problem", recipe.task, "--limit", str(items)]
        # No --quiet: a 500-item eval takes minutes (GSM8K: a quarter of an hour), and a newcomer's
        # `make run` starts with one; `gfo eval` shows a bar, or a line per chunk in a log.
        command += [*offset, *common, *fresh] + (["--adapter", adapter] if adapter else [])
        key = eval_key(command, adapter)
        hit = cache / key if cache is not None else None
        if hit is not None and (hit / "completions.jsonl").is_file():
            print(f"{name}: reusing the eval in {hit} (same command and adapter files)", flush=True)
            shutil.rmtree(directory, ignore_errors=True)
            shutil.copytree(hit, directory)
            log.append({"command": " ".join(command), "wall_s": 0.0, "reused": str(hit)})
        else:
            eval_s += run([*command, "--out", str(directory)], log)
            if hit is not None and name != "final":
                shutil.rmtree(hit, ignore_errors=True)
                shutil.copytree(directory, hit)
        scored[name] = directory
        rows = correct(directory)
        print(f"{name}: accuracy {sum(rows) / len(rows):.3f} on fresh items")

    # 0. The base model on the fresh items: the "before" of everything that follows.
    score("base", None)

    # 1. The start.
    sft_s, sft_reused = 0.0, None
    if args.start:
        adapter_dir = Path(args.start).resolve()
        start: str | None = str(adapter_dir)
        # An adapter made by `gfo sft` (an earlier run's start): its training time still counts.
        made_by = adapter_dir.parent / "sft.json"
        if made_by.is_file():
            sft_s, sft_reused = float(json.loads(made_by.read_text()).get("wall_s", 0.0)), str(made_by)
            print(f"start: {start}, trained by SFT in {sft_s / 60:.1f} min ({made_by}), counted in wall_s")
    elif not (recipe.sft if args.sft is None else args.sft):
        start = None  # PiSSA's centre is the base model exactly (docs/llm.md)
    else:
        sft_dir = out / "sft"
        command = [*gfo, "sft", "--problem", recipe.task, "--out", str(sft_dir), *common]
        limit = args.sft_limit or recipe.sft_limit
        command += ["--lr", str(args.sft_lr or recipe.sft_lr), "--epochs", str(recipe.sft_epochs)]
        command += ["--limit", str(limit)] if limit else []
        sft_s = run(command, log)
        start = str((sft_dir / "adapter").resolve())

    # 2. The search.
    search_dir = out / args.method
    algo_sets = {k: v for k, v in search.items() if k.startswith("algo.")}
    problem_sets = {k: v for k, v in search.items() if not k.startswith("algo.")}
    if start:
        problem_sets["init_adapter"] = start
    popsize = args.popsize or recipe.popsize
    generations = args.generations or recipe.generations
    batch = int(problem_sets.get("batch_size", 8))
    budget = args.completions or popsize * batch * generations
    if args.method == "es":
        command = [
            *gfo, "run", "--algo", algo, "--problem", recipe.task,
            "--popsize", str(popsize), "--generations", str(generations), "--seed", str(args.seed),
            "--out", str(search_dir), "--force", *common, *sets(problem_sets), *sets(algo_sets),
        ]  # fmt: skip
        search_s = run(command, log)
        final = search_dir / "adapter"
        summary = json.loads((search_dir / "summary.json").read_text())
        counters = summary.get("counters", {})
        completions, tokens = counters.get("completions"), counters.get("generated_tokens")
        # problem.fitness=likelihood generates nothing to train on: it scores references.
        reference_keys = ("scored_references", "reference_tokens")
        references: dict[str, float] = {k: counters[k] for k in reference_keys if k in counters}
        curve = heldout_curve(search_dir / "metrics.jsonl", summary)
    else:
        command = [
            sys.executable, str(ROOT / "benchmarks" / "grpo_baseline.py"), "--problem", recipe.task,
            "--completions", str(budget), "--out", str(search_dir), "--seed", str(args.seed), "--skip-before",
            *common, *sets(grpo_settings(problem_sets)),
        ]  # fmt: skip
        search_s = run(command, log)
        final = search_dir / "adapter"
        result = json.loads((search_dir / "result.json").read_text())
        completions, tokens = result.get("completions_generated"), result.get("tokens_generated")
        references = {}
        curve = []

    # 3. Fresh items: the start (unless it is the base model) and the final adapter.
    if start is not None:
        score("start", start)
    else:
        scored["start"] = scored["base"]
    score("final", str(final))
    keep = unseen(recipe.task, scored["final"], every) if by_seed else None
    base, begin, end = (correct(scored[k], keep) for k in ("base", "start", "final"))
    vs_start, vs_base = paired_summary(end, begin), paired_summary(end, base)
    start_vs_base = paired_summary(begin, base)

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result_json: dict[str, Any] = {
        "task": recipe.task,
        "recipe": args.recipe,
        "method": args.method,
        "settings": {
            "algo": algo,
            "popsize": popsize,
            "generations": generations,
            "problem": every,
            "search": {**search, **shape},
            "start": start or "pissa",
            "fresh": "seed" if by_seed else "offset",
            "budget_completions": budget,
        },
        "base_acc": vs_base["acc_b"],
        "start_acc": vs_start["acc_b"],
        "final_acc": vs_start["acc_a"],
        "n_items": len(end),
        "dropped_seen_items": 0 if keep is None else keep.count(False),
        "p_final_vs_start": vs_start["p_value"],
        "p_final_vs_base": vs_base["p_value"],
        "p_start_vs_base": start_vs_base["p_value"],
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
        "dtype": dtype_of(scored["final"]),
        "cpu": cpu_model(),
        "steps": log,
    }
    if recipe.task == "instruct":
        # Each eval folder read once (a PiSSA start's eval is the base model's).
        read = {folder: instruct_breakdown(folder, keep) for folder in set(scored.values())}
        result_json["breakdown"] = {name: read[folder] for name, folder in scored.items()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result_json, indent=2))
    if curve:
        plot(curve, result_json, args.json.with_suffix(".png"))
    print(
        f"{args.recipe} ({args.method}): base {result_json['base_acc']:.3f}  "
        f"start {result_json['start_acc']:.3f}  "
        f"final {result_json['final_acc']:.3f} on {len(end)} fresh items; p(final vs start) = "
        f"{vs_start['p_value']:.2g}, p(final vs base) = {vs_base['p_value']:.2g}; "
        f"{result_json['wall_s'] / 60:.1f} min (SFT {sft_s / 60:.1f} + search {search_s / 60:.1f})"
    )
    if "breakdown" in result_json:
        base, last = result_json["breakdown"]["base"], result_json["breakdown"]["final"]
        print(
            "answers naming their topic's word: base {}/{}, final {}/{}".format(
                *base["topic_named"], *last["topic_named"]
            )
            + "; looping: base {}/{}, final {}/{}".format(*base["repetitive"], *last["repetitive"])
            + f"; median words: base {base['median_words']}, final {last['median_words']}"
        )
    return result_json


def instruct_breakdown(eval_dir: Path, keep: list[bool] | None = None) -> dict[str, Any]:
    """An instruct eval's per-check counts (followed, asked), how many answers name their topic's word,
    how many loop (over half their word 4-grams repeated), asked for or not, and the answers' median
    length in words: the drift strict compliance cannot see (docs/tasks.md)."""
    from problems._instructions import count_words
    from problems.instruct import LOOP, TOPICS, constraint_report, mentions, repetition

    rows = records(eval_dir)
    rows = rows if keep is None else [r for r, k in zip(rows, keep, strict=True) if k]
    words = dict(TOPICS)
    texts = [r["completion"] if isinstance(r["completion"], str) else "" for r in rows]
    named = sum(mentions(t, words[r["example"]["topic"]]) for t, r in zip(texts, rows, strict=True))
    looped = sum(repetition(t) > LOOP for t in texts)
    report = constraint_report(texts, [r["example"] for r in rows])
    return {
        "checks": report,
        "topic_named": [named, len(rows)],
        "repetitive": [looped, len(rows)],
        "median_words": statistics.median(map(count_words, texts)) if texts else 0,
    }


def heldout_curve(metrics: Path, summary: dict[str, Any]) -> list[dict[str, float]]:
    """(training completions so far, held-out accuracy of centre and generation best) per measurement.

    A `problem.fitness=likelihood` search generates nothing: its x is the references scored.
    """
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


def plot(curve: list[dict[str, float]], result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [p["completions"] for p in curve]
    ax.plot(x, [p["center"] for p in curve], "o-", label="centre (held-out, selection set)")
    ax.plot(x, [p["best"] for p in curve], "s--", label="generation best (held-out)")
    ax.axhline(
        result["start_acc"], color="grey", lw=0.8, label=f"start, fresh items ({result['start_acc']:.3f})"
    )
    ax.axhline(
        result["final_acc"], color="green", lw=0.8, label=f"final, fresh items ({result['final_acc']:.3f})"
    )
    ax.set_xlabel("training completions (references scored, for fitness=likelihood)")
    ax.set_ylabel("accuracy (mean reward)")
    ax.set_title(f"{result['recipe']}: {result['settings']['algo']} P={result['settings']['popsize']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dtype_of(eval_dir: Path) -> str:
    return str(json.loads((eval_dir / "eval.json").read_text()).get("dtype", "?"))


def cpu_model() -> str:
    from gfo_llm.model import cpu_description

    return cpu_description()


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:  # the step printed its own error above
        print(
            f"error: step failed with exit code {exc.returncode}: {' '.join(map(str, exc.cmd))}",
            file=sys.stderr,
        )
        sys.exit(exc.returncode if exc.returncode > 0 else 1)
