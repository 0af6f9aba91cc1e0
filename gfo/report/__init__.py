"""`gfo report`: one self-contained HTML page about one run, several runs, or a bench / tune folder.

The page is built from the run folders alone (metrics.jsonl, samples.jsonl, summary.json,
config.toml), so it can be made for a run still in progress. Every curve is first a `Series` of
plain numbers; the PNGs (inline, base64) are drawn from those, and the same numbers are embedded
in the page as JSON (`<script id="gfo-report-data">`) for anyone who wants them.

- `_runs`: finding and reading the run folders (`Run`, `find_runs`, `best_generation`).
- `_figures`: the figures as numbers (`Figure`, `Panel`, `Series`, `figures`).
- `_draw`: drawing them with matplotlib (`draw`, `png`).
- `_page`: the HTML page and where it is written (`page`, `write`).
"""

from __future__ import annotations

from gfo.report._draw import draw, png
from gfo.report._figures import DETAILED_RUNS, Figure, Panel, Series, figures
from gfo.report._page import page, write
from gfo.report._runs import Run, best_generation, find_runs

__all__ = [
    "DETAILED_RUNS",
    "Figure",
    "Panel",
    "Run",
    "Series",
    "best_generation",
    "draw",
    "figures",
    "find_runs",
    "page",
    "png",
    "write",
]
