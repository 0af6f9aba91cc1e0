"""Tabular output shared by `gfo bench`, `gfo tune` and the BBOB suite: the same rows as a CSV file
(written atomically, so a reader never sees half a table), a markdown table and a rich table.

A row is a sequence of cells in the order of its header. CSV cells are exact (`cell`: a float by
its `repr`, so it reads back to the same number; None as empty); the markdown and rich renderings
take cells already formatted for a person (`fmt`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def cell(value: Any) -> str:
    """A value as a CSV cell: empty for None, a float by its `repr` (round-trips), else `str`."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def fmt(value: float | None, digits: int = 4) -> str:
    """A number for a person: `digits` significant digits, "-" for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """`rows` under `header` as CSV at `path`, every cell through `cell`; atomically replaced."""
    from gfo import checkpoint  # imports torch: not for the callers that only render

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([cell(v) for v in row] for row in rows)
    checkpoint.atomic_write(path, buffer.getvalue().encode())
    return path


def markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def rich_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    title: str | None = None,
    caption: str | None = None,
    left: Sequence[str] = (),
) -> Any:
    """A `rich.table.Table` of `rows`: numbers right-aligned, the columns named in `left` not."""
    from rich.table import Table

    table = Table(title=title, caption=caption)
    for name in header:
        table.add_column(name, justify="left" if name in left else "right")
    for row in rows:
        table.add_row(*row)
    return table
