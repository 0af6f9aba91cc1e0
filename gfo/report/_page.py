"""The report page: the HTML (inline PNGs, results, samples, settings, the numbers as JSON) and
where it is written."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from gfo import checkpoint, strictjson
from gfo.report._draw import draw, png
from gfo.report._figures import Figure, figures
from gfo.report._runs import Run, best_generation, counter_names, find_runs


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
summary{cursor:pointer;font-weight:600} .field{color:#666;font-size:12px;margin:6px 0 0}
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
    parts += ["<h2>Samples</h2>", _samples(runs), "<h2>Settings</h2>", _settings_tables(runs)]
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
    # The problem's counters, whatever they are, a column each by name ("-" where a run has none).
    counters = list(dict.fromkeys(k for run in runs for k in counter_names(run)))
    titles = [t for _, t in columns] + [k.replace("_", " ") for k in counters]
    rows = [
        "<div class='wide'><table><tr><th>run</th>" + "".join(f"<th>{e(t)}</th>" for t in titles) + "</tr>"
    ]
    for run in runs:
        s = run.summary or _partial_summary(run)
        counted = s.get("counters") or {}
        cells = [s.get(k) for k, _ in columns] + [counted.get(k) for k in counters]
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
        "counters": {k: last.get(f"{k}_total") for k in counter_names(run)},
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


#: A text field longer than this (or with a line break) is shown as a block, not inline.
_INLINE_CHARS = 40


def _samples(runs: list[Run]) -> str:
    """Each run's samples at the start and at the kept solution, whatever fields a problem records:
    a field holding long or multi-line text in any sample of the run is shown as a preformatted block
    under its name, every other field inline as "name value"."""
    e = html.escape
    with_samples = [r for r in runs if r.samples]
    if not with_samples:
        return "<p class='note'>the problem records no samples (a test function)</p>"
    out = []
    for run in with_samples:
        generations = [s.get("generation") for s in run.samples]
        first = min(g for g in generations if isinstance(g, int))
        best = best_generation(run)
        if best not in generations:
            best = max(g for g in generations if isinstance(g, int))
        blocks = {
            k
            for s in run.samples
            for k, v in s.items()
            if isinstance(v, str) and ("\n" in v or len(v) > _INLINE_CHARS)
        }
        columns = []
        for title, g in (
            (f"start (generation {first})", first),
            (f"kept solution (generation {best})", best),
        ):
            body = [f"<h3>{e(title)}</h3>"]
            for s in (s for s in run.samples if s.get("generation") == g):
                facts = ", ".join(f"{k} {_fmt(v)}" for k, v in s.items() if k not in blocks | {"generation"})
                if facts:
                    body.append(f"<p class='note'>{e(facts)}</p>")
                for k in (k for k in s if k in blocks):
                    body.append(f"<p class='field'>{e(k)}</p><pre>{e(_fmt(s[k]))}</pre>")
            columns.append("<div>" + "\n".join(body) + "</div>")
        opened = " open" if len(with_samples) == 1 else ""
        out.append(f"<details{opened}><summary>{e(run.label)}</summary><div class='samples'>")
        out += columns
        out.append("</div></details>")
    return "\n".join(out)
