"""The one interface every optimization problem implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from gfo.config import plain_values

Sense = Literal["min", "max"]


@dataclass(frozen=True)
class Context:
    """What a batched evaluation may depend on besides the candidates.

    Everything an evaluation is allowed to depend on is here, so results do not change with how a
    population is split across workers: a problem that samples data (an LLM mini-batch) derives it
    from `(seed, generation)`, which gives every candidate the same mini-batch (common random
    numbers) and a fresh one each generation.
    """

    generation: int
    seed: int


@dataclass
class Evaluation:
    """Result of evaluating a population.

    `fitness` is in the problem's own sense. `info` holds per-candidate numbers (logged as means),
    `counters` additive totals such as generated tokens (summed over workers; the loop also logs
    their rate), `samples` a few example records (e.g. completions) for the log.
    """

    fitness: torch.Tensor
    info: dict[str, torch.Tensor] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def concat(parts: list[Evaluation]) -> Evaluation:
        """Join evaluations of consecutive slices of one population (as workers return them)."""
        info_keys = parts[0].info.keys()
        counter_keys = {k for p in parts for k in p.counters}
        return Evaluation(
            fitness=torch.cat([p.fitness for p in parts]),
            info={k: torch.cat([p.info[k] for p in parts]) for k in info_keys},
            counters={k: sum(p.counters.get(k, 0.0) for p in parts) for k in sorted(counter_keys)},
            samples=[s for p in parts for s in p.samples],
        )


class Problem:
    """A fitness function over real vectors, evaluated a population at a time.

    Subclasses set `sense` once (the only place the objective direction is declared), define
    `Config` (a frozen dataclass of their settings), `solution_length`, and `evaluate`. Every
    problem is constructed the same way: `Problem(config)`, which must stay cheap: the heavy part
    goes into `prepare()`, and `solution_length` must be known without it (the driver of a Ray run
    never prepares, and `gfo tune` sizes its search before any trial does).
    """

    sense: ClassVar[Sense] = "min"
    Config: ClassVar[type] = object

    solution_length: int
    #: Default spread of the initial search distribution (an algorithm's `stdev_init` wins).
    initial_stdev: float = 1.0
    #: Population size used when the algorithm's `popsize` is not set (None: the algorithm's own
    #: rule, e.g. 4 + 3 ln n). Problems whose evaluations are expensive suggest a small one.
    default_popsize: int | None = None
    #: Config keys whose effect lives in a checkpoint (the initial centre and spread, which the
    #: search distribution has replaced after generation 0): a resume refuses to change them,
    #: since the loaded state would silently override the new value.
    state_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any) -> None:
        self.config = config

    def initial_center(self) -> torch.Tensor:
        """Centre of the initial search distribution."""
        return torch.zeros(self.solution_length)

    def prepare(self) -> None:
        """Heavy one-time setup (load a model); called once per process before evaluating."""

    def close(self) -> None:
        """Release what `prepare()` took (a model, an inference engine); a later evaluation prepares again.

        The run loop calls it when a run ends however it ends (done, error, signal), Ray actors when
        they shut down, `gfo tune` for the problem it sized the search with. Must be safe to call on
        a problem never prepared, and twice.
        """

    def driver_state(self) -> Any:
        """What a prepared worker (a Ray actor) hands the driver's copy of the problem, so that the
        driver answers `initial_center()`, `export()` and `describe()` without `prepare()` (without
        loading a model of its own). None (default): the driver needs nothing."""
        return None

    def adopt_driver_state(self, state: Any) -> None:
        """Take a worker's `driver_state()` (called in the driver, before `initial_center()`)."""

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        """Fitness of each row of a (popsize, solution_length) tensor."""
        raise NotImplementedError

    def heldout_every(self) -> int:
        """Evaluate the centre and best candidate on held-out data every k generations (0: never)."""
        return 0

    def evaluate_heldout(self, solutions: torch.Tensor) -> torch.Tensor | Evaluation:
        """Held-out score (same sense as fitness) of each row; only called if `heldout_every() > 0`.

        Or an `Evaluation` whose `fitness` is those scores and whose `info` holds numbers about the
        first row, which the loop logs as `heldout_<name>` beside the score (the loop passes the
        centre first; an LLM problem reports its KL to the start). Other rows may hold NaN there."""
        raise NotImplementedError

    def export(self, solution: torch.Tensor, run_dir: Path) -> Path | None:
        """Write a solution in the problem's native form (e.g. `run_dir/adapter`); return where, if any."""
        return None

    def describe(self) -> dict[str, Any]:
        """A few facts shown at start and stored in the run directory (e.g. search dimension)."""
        return {"solution_length": self.solution_length, "sense": self.sense}

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a run directory to be resumed with this problem: its class, dimension
        and the `state_settings` (as `problem.KEY`)."""
        values = plain_values(self.config) if self.state_settings else {}
        return {
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "dim": self.solution_length,
            **{f"problem.{key}": values[key] for key in self.state_settings},
        }


def better(a: float, b: float, sense: Sense) -> bool:
    """True if fitness `a` is strictly better than `b` under `sense` (NaN is never better)."""
    return a < b if sense == "min" else a > b
