"""The learning harness is `gfo learn` now (gfo_llm/learn.py, recipes in gfo_llm/recipes/); this
script runs it with the same arguments, so the lab log's commands (docs/lab/) still work:

    python benchmarks/learning.py --recipe arithmetic --json runs/learning/arithmetic.json
    # is
    gfo learn --recipe arithmetic --json runs/learning/arithmetic.json
"""

from __future__ import annotations

import subprocess
import sys

if __name__ == "__main__":
    sys.exit(subprocess.call([sys.executable, "-m", "gfo.cli", "learn", *sys.argv[1:]]))
