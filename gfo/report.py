"""`gfo report`: one self-contained HTML page about one run, several runs, or a bench / tune folder.

The page is built from the run folders alone (metrics.jsonl, samples.jsonl, summary.json,
config.toml), so it can be made for a run still in progress. Every curve is first a `Series` of
plain numbers; the PNGs (inline, base64) are drawn from those, and the same numbers are embedded
in the page as JSON (`<script id="gfo-report-data">`) for anyone who wants them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gfo import checkpoint, strictjson
from gfo.errors import GfoError

#: Runs drawn with their mean and spread as well as their best so far; more would hide each other.
DETAILED_RUNS = 3


@dataclass
class Run:
    """One run folder, read back."""

    label: str
    group: str  # runs of one group share a colour (a bench's algorithm)
    path: Path
    records: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    summary: dict[str, Any] | None
    config: dict[str, Any]
    sense: str


@dataclass
class Series:
    """One curve: `kind` "line", "points" or "band" (between `y` and `y2`)."""

    gid: str  # "<run label>|<quantity>": what a test or a reader looks a curve up by
    label: str | None
    x: list[float]
    y: list[float]
    kind: str = "line"
    y2: list[float] | None = None
    group: str = ""
    style: str = "-"


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    log_y: bool = False


@dataclass
class Figure:
    key: str
    title: str
    panels: list[Panel]
    note: str = ""


# ---------------------------------------------------------------- reading runs


def find_runs(paths: Sequence[Path]) -> list[Run]:
    """The runs in `paths`: each is a run folder, or a folder holding run folders (bench, tune)."""
    runs: list[Run] = []
    for root in paths:
        if not root.is_dir():
            raise GfoError(f"{root} is not a directory; give run folders (or a bench or tune folder)")
        found = (
            [root]
            if _is_run(root)
            else sorted(p.parent for p in root.rglob("metrics.jsonl") if _is_run(p.parent))
        )
        if not found:
            raise GfoError(f"{root} holds no gfo run (no config.toml with metrics.jsonl beside it)")
        for path in found:
            rel = path.relative_to(root).parts
            label = "/".join(rel) if rel else path.resolve().name
            if len(paths) > 1 and rel:
                label = f"{root.name}/{label}"
            group = "/".join(rel[:-1]) if len(rel) > 1 else label
            runs.append(_read_run(path, label, group))
    labels = [r.label for r in runs]
    for i, run in enumerate(runs):
        if labels.count(run.label) > 1:
            run.label = run.group = f"{run.label} ({i + 1})"
    return runs


def _is_run(path: Path) -> bool:
    return (path / "config.toml").is_file() and (path / "metrics.jsonl").is_file()


def _read_run(path: Path, label: str, group: str) -> Run:
    summary = None
    if (path / "summary.json").exists():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except ValueError:
            summary = None
    with (path / "config.toml").open("rb") as fh:
        config = tomllib.load(fh)
    return Run(
        label=label,
        group=group,
        path=path,
        records=_jsonl(path / "metrics.jsonl"),
        samples=_jsonl(path / "samples.jsonl"),
        summary=summary,
        config=config,
        sense=(summary or {}).get("sense") or _sense(config.get("problem_name", "")),
    )


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn last line of a run in progress
    return out


def _sense(problem: str) -> str:
    from gfo.registry import PROBLEMS

    try:
        return str(PROBLEMS.get(problem).sense)
    except Exception:
        return "min"


# ---------------------------------------------------------------- the curves


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def _column(records: list[dict[str, Any]], key: str) -> list[float]:
    out = []
    for r in records:
        value: Any = r
        for part in key.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        out.append(_num(value))
    return out


def _axes(runs: list[Run]) -> list[tuple[str, str]]:
    """x axes: (key, label). Completions where every run counts them (LLM tasks), else evaluations."""
    work = ("completions_total", "completions (answers generated)")
    if not all(r.records and "completions_total" in r.records[-1] for r in runs):
        work = ("evaluations", "evaluations (candidates scored)")
    return [("generations", "generations completed"), work, ("wall_s", "wall time (s, search loop)")]


def _x(run: Run, key: str) -> list[float]:
    if key == "generations":
        return [_num(r.get("generation")) + 1 for r in run.records]
    return _column(run.records, key)


def figures(runs: list[Run]) -> list[Figure]:
    """Every figure of the report, as numbers."""
    detailed = len(runs) <= DETAILED_RUNS
    out = [_fitness(runs, detailed)]
    if any("heldout" in r or "heldout_initial" in r for run in runs for r in run.records):
        out.append(_heldout(runs))
    if any("generated_tokens_per_s" in r or "capped_fraction" in r for run in runs for r in run.records):
        out.append(_throughput(runs))
    if any("stepsize_mean" in r for run in runs for r in run.records):
        out.append(_stepsize(runs, detailed))
    return out


def _fitness(runs: list[Run], detailed: bool) -> Figure:
    sense = runs[0].sense
    ylabel = f"fitness ({'lower' if sense == 'min' else 'higher'} is better)"
    panels = []
    for key, xlabel in _axes(runs):
        panel = Panel(f"training fitness against {xlabel.split(' (')[0]}", xlabel, ylabel)
        for run in runs:
            x = _x(run, key)
            name = "" if len(runs) == 1 else f"{run.label}: "
            if detailed:
                panel.series.append(
                    Series(f"{run.label}|spread", f"{name}spread (best to worst)", x,
                           _column(run.records, "best"), "band", _column(run.records, "worst"), run.group)
                )  # fmt: skip
                panel.series.append(
                    Series(f"{run.label}|mean", f"{name}generation mean", x,
                           _column(run.records, "mean"), group=run.group, style="--")
                )  # fmt: skip
            if len(runs) == 1:
                panel.series.append(
                    Series(f"{run.label}|best", "generation best", x, _column(run.records, "best"),
                           group=run.group, style=":")
                )  # fmt: skip
            panel.series.append(
                Series(f"{run.label}|best_so_far", f"{name}best so far" if detailed else run.label, x,
                       _column(run.records, "best_so_far"), group=run.group)
            )  # fmt: skip
        values = [v for s in panel.series for v in (*s.y, *(s.y2 or [])) if math.isfinite(v)]
        panel.log_y = sense == "min" and bool(values) and min(values) > 0
        panels.append(panel)
    note = "" if detailed else "best so far of each run (mean and spread are drawn for up to 3 runs)"
    return Figure("fitness", "Training fitness (what the search optimizes)", panels, note)


def _heldout(runs: list[Run]) -> Figure:
    panels = []
    for key, xlabel in _axes(runs):
        panel = Panel(f"held-out score against {xlabel.split(' (')[0]}", xlabel, "held-out score")
        for run in runs:
            name = "" if len(runs) == 1 else f"{run.label}: "
            held = [r for r in run.records if "heldout" in r]
            start = [_num(r["heldout_initial"]) for r in run.records if "heldout_initial" in r]
            sub = Run(run.label, run.group, run.path, held, [], None, {}, run.sense)
            x = ([0.0] if start else []) + _x(sub, key)
            panel.series.append(
                Series(f"{run.label}|heldout/center", f"{name}centre", x,
                       start + _column(held, "heldout/center"), "points", group=run.group, style="o-")
            )  # fmt: skip
            panel.series.append(
                Series(f"{run.label}|heldout/best", f"{name}generation's best candidate", _x(sub, key),
                       _column(held, "heldout/best"), "points", group=run.group, style="s--")
            )  # fmt: skip
        panels.append(panel)
    note = "the first point (at 0) is the starting centre, scored before generation 0"
    return Figure("heldout", "Held-out score (fixed items the search never trains on)", panels, note)


def _throughput(runs: list[Run]) -> Figure:
    panels = []
    for key, title, ylabel in (
        ("generated_tokens_per_s", "generated tokens per second", "tokens / s"),
        ("capped_fraction", "completions cut at max_new_tokens", "fraction capped"),
    ):
        panel = Panel(title, "generations completed", ylabel)
        for run in runs:
            label = "" if len(runs) == 1 else run.label
            panel.series.append(
                Series(f"{run.label}|{key}", label or None, _x(run, "generations"),
                       _column(run.records, key), group=run.group)
            )  # fmt: skip
        panels.append(panel)
    return Figure("throughput", "Throughput", panels)


def _stepsize(runs: list[Run], detailed: bool) -> Figure:
    panel = Panel("search distribution's step size", "generations completed", "step size (stdev)")
    for run in runs:
        x = _x(run, "generations")
        name = "" if len(runs) == 1 else f"{run.label}: "
        if detailed:
            panel.series.append(
                Series(f"{run.label}|stepsize_range", f"{name}min to max over coordinates", x,
                       _column(run.records, "stepsize_min"), "band", _column(run.records, "stepsize_max"),
                       run.group)
            )  # fmt: skip
        panel.series.append(
            Series(f"{run.label}|stepsize_mean", f"{name}mean", x, _column(run.records, "stepsize_mean"),
                   group=run.group)
        )  # fmt: skip
    values = [v for s in panel.series for v in (*s.y, *(s.y2 or [])) if math.isfinite(v)]
    panel.log_y = bool(values) and min(values) > 0 and max(values) / min(values) > 100
    return Figure("stepsize", "Step size", [panel])


# ---------------------------------------------------------------- drawing


def draw(figure: Figure, runs: list[Run]) -> Any:
    """A matplotlib figure of `figure`: one colour per group, legends on every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = list(dict.fromkeys(r.group for r in runs))
    palette = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    colour = {g: palette(i % palette.N) for i, g in enumerate(groups)}
    single = len(runs) == 1
    width = 4.6 * len(figure.panels) if len(figure.panels) > 1 else 7.5
    fig, axes = plt.subplots(1, len(figure.panels), figsize=(width, 3.9), dpi=100, squeeze=False)
    for ax, panel in zip(axes[0], figure.panels, strict=True):
        labelled: set[tuple[str, str]] = set()
        for i, s in enumerate(panel.series):
            c = palette(i % palette.N) if single else colour.get(s.group, "black")
            label = s.label
            run, quantity = s.gid.split("|", 1)
            if not single and s.group != run:  # one of several runs of a group: one legend entry
                count = sum(r.group == s.group for r in runs)
                what = (s.label or "").rpartition(": ")[2] if ": " in (s.label or "") else ""
                label = (
                    None if (s.group, quantity) in labelled else f"{s.group} ({count} runs) {what}".strip()
                )
                labelled.add((s.group, quantity))
            if s.kind == "band":
                ax.fill_between(s.x, s.y, s.y2 or s.y, color=c, alpha=0.15, lw=0, label=label, gid=s.gid)
            else:
                ax.plot(
                    s.x, s.y, s.style, color=c, label=label, lw=2 if s.style == "-" else 1, ms=4, gid=s.gid
                )
        if panel.log_y:
            ax.set_yscale("log")
        if panel.xlabel.startswith("generations"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if any(s.label for s in panel.series):
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


# ---------------------------------------------------------------- the page


def write(paths: Sequence[Path], out: Path | None = None) -> Path:
    """Write the report of `paths` to `out` (default: PATH/report.html for one path, else
    report.html in the paths' common folder), its PNGs to a folder of the same name."""
    runs = find_runs(paths)
    if out is None:
        base = paths[0] if len(paths) == 1 else Path(os.path.commonpath([p.resolve() for p in paths]))
        out = base / "report.html"
    images = out.with_suffix("")
    images.mkdir(parents=True, exist_ok=True)
    figs = figures(runs)
    blocks = []
    for figure in figs:
        data = png(draw(figure, runs))
        (images / f"{figure.key}.png").write_bytes(data)
        blocks.append((figure, base64.b64encode(data).decode()))
    checkpoint.atomic_write(out, page(runs, blocks).encode())
    return out


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;
color:#222;padding:0 16px}
h1{margin-bottom:0} .sub{color:#666;margin-top:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left} th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.wide{overflow-x:auto} img{max-width:100%} .note{color:#666;font-size:13px}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:8px;white-space:pre-wrap;font-size:12px;margin:4px 0}
.samples{display:grid;grid-template-columns:1fr 1fr;gap:16px} details{margin:8px 0}
summary{cursor:pointer;font-weight:600}
"""


def page(runs: list[Run], blocks: list[tuple[Figure, str]]) -> str:
    """The HTML of the report."""
    e = html.escape
    what = runs[0].label if len(runs) == 1 else f"{len(runs)} runs"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>gfo report: {e(what)}</title><style>{_CSS}</style></head><body>",
        f"<h1>gfo report: {e(what)}</h1>",
        f"<p class='sub'>{e(_problems(runs))}; written {datetime.now():%Y-%m-%d %H:%M} from "
        f"{e(', '.join(str(r.path) for r in runs[:6]))}{' ...' if len(runs) > 6 else ''}</p>",
        "<h2>Results</h2>",
        _summary_table(runs),
    ]
    for figure, data in blocks:
        parts.append(f"<h2>{e(figure.title)}</h2>")
        parts.append(f"<img alt='{e(figure.title)}' src='data:image/png;base64,{data}'>")
        if figure.note:
            parts.append(f"<p class='note'>{e(figure.note)}</p>")
    parts += ["<h2>Sample completions</h2>", _samples(runs), "<h2>Settings</h2>", _settings_tables(runs)]
    series = {f.key: [asdict(p) for p in f.panels] for f, _ in blocks}
    data = strictjson.dumps(series, separators=(",", ":")).replace("</", "<\\/")
    parts.append(f"<script type='application/json' id='gfo-report-data'>{data}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _problems(runs: list[Run]) -> str:
    pairs = dict.fromkeys(f"{r.config.get('algorithm')} on {r.config.get('problem_name')}" for r in runs)
    return "; ".join(list(pairs)[:4]) + (" ..." if len(pairs) > 4 else "")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def _summary_table(runs: list[Run]) -> str:
    e = html.escape
    columns = [
        ("best", "best"), ("heldout_initial", "held-out at start"), ("heldout_best", "best held-out"),
        ("generations", "generations"), ("evaluations", "evaluations"), ("wall_s", "wall s"),
        ("stop_reason", "stopped by"), ("exported", "exported"),
    ]  # fmt: skip
    rows = ["<div class='wide'><table><tr><th>run</th>" + "".join(f"<th>{e(t)}</th>" for _, t in columns)]
    rows[0] += "<th>completions</th><th>tokens</th></tr>"
    for run in runs:
        s = run.summary or _partial_summary(run)
        counters = s.get("counters") or {}
        cells = [s.get(k) for k, _ in columns] + [
            counters.get("completions"),
            counters.get("generated_tokens"),
        ]
        rows.append(
            f"<tr><td>{e(run.label)}</td>"
            + "".join(f"<td class='num'>{e(_fmt(v))}</td>" for v in cells)
            + "</tr>"
        )
    rows.append("</table></div>")
    if any(r.summary is None for r in runs):
        rows.append(
            "<p class='note'>runs without summary.json (still running?) show their last metrics line</p>"
        )
    return "\n".join(rows)


def _partial_summary(run: Run) -> dict[str, Any]:
    last = run.records[-1] if run.records else {}
    return {
        "best": last.get("best_so_far"),
        "generations": len(run.records),
        "evaluations": last.get("evaluations"),
        "wall_s": last.get("wall_s"),
        "stop_reason": "running or stopped",
    }


def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    flat = {"algorithm": config.get("algorithm"), "problem": config.get("problem_name")}
    for section in ("algo", "problem", "run"):
        for key, value in (config.get(section) or {}).items():
            flat[f"{section}.{key}"] = ",".join(map(str, value)) if isinstance(value, list) else value
    return flat


def _settings_tables(runs: list[Run]) -> str:
    e = html.escape
    flats = [_flat_config(r.config) for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    same = [k for k in keys if all(f.get(k) == flats[0].get(k) for f in flats)]
    differ = [k for k in keys if k not in same]
    title = "every run" if len(runs) > 1 else "setting"
    out = [f"<div class='wide'><table><tr><th>{title}</th><th>value</th></tr>"]
    out += [f"<tr><td>{e(k)}</td><td>{e(_fmt(flats[0].get(k)))}</td></tr>" for k in same]
    out.append("</table></div>")
    if differ:
        out.append(
            "<p>Settings that differ between the runs:</p><div class='wide'><table><tr><th>setting</th>"
        )
        out.append("".join(f"<th>{e(r.label)}</th>" for r in runs) + "</tr>")
        for k in differ:
            out.append(
                f"<tr><td>{e(k)}</td>" + "".join(f"<td>{e(_fmt(f.get(k)))}</td>" for f in flats) + "</tr>"
            )
        out.append("</table></div>")
    return "\n".join(out)


def best_generation(run: Run) -> int | None:
    """The generation whose solution the run kept: the held-out best's, else the training best's."""
    chosen = (run.summary or {}).get("heldout_generation")
    if isinstance(chosen, int) and chosen >= 0:
        return chosen
    scored = [(r["best"], r["generation"]) for r in run.records if isinstance(r.get("best"), int | float)]
    if not scored:
        return None
    pick = min(scored) if run.sense == "min" else max(scored, key=lambda t: (t[0], -t[1]))
    return int(pick[1])


def _samples(runs: list[Run]) -> str:
    e = html.escape
    with_samples = [r for r in runs if r.samples]
    if not with_samples:
        return "<p class='note'>the problem records no sample completions (a test function)</p>"
    out = []
    for run in with_samples:
        generations = [s.get("generation") for s in run.samples]
        first = min(g for g in generations if isinstance(g, int))
        best = best_generation(run)
        if best not in generations:
            best = max(g for g in generations if isinstance(g, int))
        columns = []
        for title, g in (
            (f"start (generation {first})", first),
            (f"kept solution (generation {best})", best),
        ):
            body = [f"<h3>{e(title)}</h3>"]
            for s in (s for s in run.samples if s.get("generation") == g):
                facts = ", ".join(
                    f"{k} {_fmt(v)}" for k, v in s.items() if k not in ("prompt", "completion", "generation")
                )
                body.append(f"<p class='note'>{e(facts)}</p>")
                body.append(f"<pre>{e(str(s.get('prompt', '')))}</pre>")
                body.append(f"<pre><b>{e(str(s.get('completion', '')))}</b></pre>")
            columns.append("<div>" + "\n".join(body) + "</div>")
        opened = " open" if len(with_samples) == 1 else ""
        out.append(f"<details{opened}><summary>{e(run.label)}</summary><div class='samples'>")
        out += columns
        out.append("</div></details>")
    return "\n".join(out)
