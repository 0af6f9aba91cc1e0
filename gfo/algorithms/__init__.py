"""Every search algorithm comes from EvoTorch; this package turns them into ask/tell.

gfo's loop owns evaluation (batching a population, workers, checkpoints), so each algorithm is an
`ask` (sample) and a `tell` (update) that run EvoTorch's own code. Nothing here re-implements an
update rule, and `tests/test_algorithms.py` checks every built-in against EvoTorch's class `step()`
for the same seed.

- `_base`: the interface (`Algorithm`, `SearchSpec`, `default_popsize`) and what the adapters share.
- `_configs`: the hyperparameters, one frozen dataclass per algorithm, validated on construction.
- `_functional`: `es`, `pgpe`, `cem`, on EvoTorch's public functional ask/tell.
- `_classic`: `snes`, `xnes`, `cmaes`, `sep-cmaes`, EvoTorch's class algorithms split at the
  evaluation; every private EvoTorch access they need lives in `gfo._evotorch_private`.
"""

from __future__ import annotations

from gfo.algorithms._base import Algorithm, SearchSpec, default_popsize
from gfo.algorithms._classic import CMAES, SNES, XNES, SepCMAES
from gfo.algorithms._configs import (
    MAX_FULL_COVARIANCE_DIM,
    MAX_POPSIZE,
    CEMConfig,
    CMAESConfig,
    ESConfig,
    NESConfig,
    PGPEConfig,
    XNESConfig,
)
from gfo.algorithms._functional import CEM, ES, PGPE

__all__ = [
    "CEM",
    "CMAES",
    "ES",
    "MAX_FULL_COVARIANCE_DIM",
    "MAX_POPSIZE",
    "PGPE",
    "SNES",
    "XNES",
    "Algorithm",
    "CEMConfig",
    "CMAESConfig",
    "ESConfig",
    "NESConfig",
    "PGPEConfig",
    "SearchSpec",
    "SepCMAES",
    "XNESConfig",
    "default_popsize",
]
