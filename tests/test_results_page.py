"""Numbers belong to one page: every measured figure the README quotes is on docs/results.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: A measured figure: a decimal (0.580, 9.6), a p-value (6.6e-32) or a count of items (266/300).
FIGURE = re.compile(r"(?<![\w.])\d+(?:\.\d+(?:e-?\d+)?|/\d+)(?![\w.])")
#: What looks like a figure and is not one: a version after its name, an arXiv id inside a link.
NOT_FIGURES = re.compile(r"Python \d+\.\d+|arXiv \d+\.\d+|\]\([^)]*\)")


def quoted_figures(text: str) -> set[str]:
    """The figures of `text`, less the code it runs (```bash and ```python blocks are commands and
    examples, not results; a plain ``` block, such as the lines a command printed, counts)."""
    text = re.sub(r"^```(?:bash|python|toml)\n.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return set(FIGURE.findall(NOT_FIGURES.sub("", text)))


def test_every_figure_of_the_readme_is_on_the_results_page() -> None:
    results = (ROOT / "docs" / "results.md").read_text()
    missing = sorted(f for f in quoted_figures((ROOT / "README.md").read_text()) if f not in results)
    assert not missing, (
        f"README.md quotes {missing}, which docs/results.md does not list: put the claim (with its "
        "command, commit and caveats) on the Results page, or drop the figure from the README"
    )


def test_the_figures_are_found() -> None:
    text = (
        "Python 3.11, [paper](https://arxiv.org/abs/2507.04453): 0.137 -> 0.580, p = 6.6e-32, "
        "266/300, 9.6 minutes.\n```bash\nmake run  # 1.5\n```\n```\nfinal 0.580\n```\n"
    )
    assert quoted_figures(text) == {"0.137", "0.580", "6.6e-32", "266/300", "9.6"}
