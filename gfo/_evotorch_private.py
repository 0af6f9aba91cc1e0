"""The only EvoTorch internals gfo touches, each with the public API it stands in for (EvoTorch 0.6.1).

EvoTorch's class algorithms own their loop: `step()` samples, calls `problem.evaluate` and updates in
one call. PGPE and CEM also exist as public functional ask/tell (`gfo.algorithms` uses those); SNES,
XNES and CMA-ES do not, so gfo splits their `step()` at the evaluation and calls, for each half, the
code `step()` itself runs. Where that code is private, this module is the one place that reaches it:

- `GaussianSearchAlgorithm._distribution` (SNES, XNES): the search distribution. `step()` samples
  from it and computes gradients on it; a resume has to replace it. The public API offers the
  read-only `status["center"]` / `status["stdev"]` and no way to set them.
- `GaussianSearchAlgorithm._update_distribution(gradients)` (SNES, XNES): the update half of
  `step()` (learning rates, stdev limits, natural-gradient step). No public method applies gradients.
- `GaussianSearchAlgorithm._ranking_method` (SNES, XNES): the fitness shaping the algorithm was built
  with ("nes" utilities), which `step()` passes to `compute_gradients`. No public getter.
- `evotorch.algorithms.cmaes._h_sig` (CMA-ES): the flag that stalls the p_c update. `CMAES` exposes
  every other part of its update as a public method (`update_m`, `update_sigma`, `update_C`, ...);
  this one it computes only inside the private `_step`.

`tests/test_algorithms.py` runs every built-in against EvoTorch's own `step()` for the same seed, so
an EvoTorch release that moves one of these fails there, not in a run.
"""

from __future__ import annotations

from typing import Any

import torch


def nes_sample(algorithm: Any, popsize: int, generator: Any) -> torch.Tensor:
    """The sampling half of `_step_non_distributed`: `popsize` rows from the search distribution."""
    out = torch.empty(popsize, algorithm.problem.solution_length, dtype=algorithm.problem.dtype)
    algorithm._distribution.sample(out=out, generator=generator)
    return out


def nes_update(algorithm: Any, population: torch.Tensor, fitness: torch.Tensor, sense: str) -> None:
    """The update half of `_step_non_distributed`: gradients of the ranked fitness, then the step."""
    gradients = algorithm._distribution.compute_gradients(
        population, fitness, objective_sense=sense, ranking_method=algorithm._ranking_method
    )
    algorithm._update_distribution(gradients)


def nes_parameters(algorithm: Any) -> dict[str, torch.Tensor]:
    """The distribution's parameters (`mu`, `sigma`; for xNES `sigma` is the full factor A)."""
    return dict(algorithm._distribution.parameters)


def set_nes_parameters(algorithm: Any, parameters: dict[str, Any]) -> None:
    """Replace the distribution's parameters (a resume), keeping its other settings."""
    algorithm._distribution = algorithm._distribution.modified_copy(**parameters)


def cmaes_h_sig(p_sigma: torch.Tensor, c_sigma: Any, generation: int) -> torch.Tensor:
    """Hansen's (2016) h_sigma, which switches the p_c update off while sigma grows fast."""
    from evotorch.algorithms.cmaes import _h_sig

    return _h_sig(p_sigma, c_sigma, generation)
