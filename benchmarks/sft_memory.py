"""Peak memory and time of `gfo sft` steps at several micro-batch sizes, side by side in one run.

    python benchmarks/sft_memory.py --problem gsm8k --limit 32 --micro 16,4 --json FILE

Each size is one `gfo sft` subprocess on the same `--limit` items (`--limit / --batch-size` steps of
`--batch-size` examples), its peak RSS read from the kernel (`wait4`) and its step time from its own
`sft.json` (its `wall_s`: the model load and the training). The update is the same at every size (a test
compares the adapters); what changes is how many examples' activations are alive at once. Prints
each size and the ratios to the first one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def measure(problem: str, micro: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    out = scratch / f"micro-{micro}"
    command = [
        sys.executable, "-m", "gfo.cli", "sft", "--problem", problem, "--out", str(out), "--quiet",
        "--limit", str(args.limit), "--batch-size", str(args.batch_size), "--micro-batch-size", str(micro),
        *[part for key in args.set for part in ("--set", key)],
    ]  # fmt: skip
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    _, status, usage = os.wait4(subprocess.Popen(command).pid, 0)  # this child's own peak RSS
    if code := os.waitstatus_to_exitcode(status):
        raise SystemExit(f"error: gfo sft exited with {code}: {' '.join(command)}")
    result = json.loads((out / "sft.json").read_text())
    return {
        "micro_batch_size": micro,
        "steps": result["steps"],
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "wall_s": round(time.perf_counter() - started, 1),
        "sft_wall_s": result["wall_s"],
        "first_loss": result["first_loss"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--problem", default="gsm8k")
    p.add_argument("--limit", type=int, default=32, help="training items (steps = limit / batch size)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--micro", default="16,4", help="micro-batch sizes, comma-separated; ratios to the first")
    p.add_argument("--set", action="append", default=[], help="problem.KEY=VALUE for every run (repeatable)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.micro.split(",")]
    with tempfile.TemporaryDirectory(prefix="sft-memory-") as scratch:
        rows = [measure(args.problem, micro, args, Path(scratch)) for micro in sizes]
    first = rows[0]
    for row in rows:
        row["rss_over_first"] = round(row["peak_rss_mb"] / first["peak_rss_mb"], 3)
        row["time_over_first"] = round(row["sft_wall_s"] / first["sft_wall_s"], 3)
        print(
            f"micro-batch {row['micro_batch_size']:>3}: peak RSS {row['peak_rss_mb']:>8.0f} MB"
            f" ({row['rss_over_first']:.2f}x), {row['steps']} steps in {row['sft_wall_s']:.0f} s"
            f" ({row['time_over_first']:.2f}x), first loss {row['first_loss']:.4f}",
            flush=True,
        )
    result = {"problem": args.problem, "limit": args.limit, "batch_size": args.batch_size, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
