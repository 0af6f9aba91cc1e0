"""The GRPO baseline lives in the package now (gfo_llm/grpo.py, what `gfo learn --method grpo` runs);
this script runs it with the same arguments, so the lab log's commands (docs/lab/) still work:

    python benchmarks/grpo_baseline.py --completions 256 --out runs/grpo
    # is
    python -m gfo_llm.grpo --completions 256 --out runs/grpo
"""

from __future__ import annotations

import subprocess
import sys

if __name__ == "__main__":
    sys.exit(subprocess.call([sys.executable, "-m", "gfo_llm.grpo", *sys.argv[1:]]))
