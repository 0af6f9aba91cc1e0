"""JSON that every parser reads: non-finite numbers are written as null.

Python's `json` writes NaN and infinity as the bare words `NaN` and `Infinity`, which are not JSON
(RFC 8259, section 6) and which strict parsers (jq, JavaScript's `JSON.parse`, Go, Rust's serde)
refuse. Every file gfo writes goes through `dumps`; a reader gets `null` where a number is not
finite and finds how many there were next to it (`nonfinite` counts in metrics and summaries).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every non-finite float (at any depth of dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` of `finite(value)`; `allow_nan=False` makes a missed non-finite number an error."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (metrics.jsonl, samples.jsonl): none if it is missing, a torn
    last line (a run in progress, or killed mid-write) left out."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
