"""Evaluate populations on Ray actors: `gfo run ... --actors N [--ray-address ADDR] [--gpus-per-actor G]`.

The actors are EvoTorch's (`evotorch.core.EvaluationActor`), each holding one copy of
`_RemoteProblem`, an `evotorch.Problem` whose `_prepare()` hook builds the gfo problem and calls
its `prepare()` (loads the model) once per actor. EvoTorch's own dispatch (`Problem._evaluate_all`:
`ActorPool.map_unordered` over `batch.split(n)`) is not used, because

- it returns only the fitness column, while a gfo `Evaluation` also carries per-candidate `info`,
  additive `counters` and `samples`;
- the `Context` (generation, seed) an evaluation depends on would have to be pushed to every
  actor through EvoTorch's sync hooks before each batch;
- an actor that dies aborts the whole `map_unordered` and the pieces in flight are lost;
- there is no held-out evaluation.

So each contiguous slice of the population goes to one actor through `EvaluationActor.call`, and
the parts are joined with `Evaluation.concat`. Results do not depend on the number of actors:
candidates come from the driver's algorithm and mini-batches from `Context(generation, seed)`. An
actor that dies (`RayActorError`) is replaced by a fresh one (which prepares again) and its slice
is evaluated again, so the generation is not lost.

The driver builds the problem too, but never prepares it: `solution_length` is known without
`prepare()` (an LLM problem reads the model's config, not its weights), and what `initial_center()`,
`export()` and `describe()` need comes from actor 0 once it is prepared (`Problem.driver_state`,
for an LLM problem the search space and the PiSSA start). So the driver holds no model. At
shutdown every actor closes its problem (`Problem.close`: a vLLM engine stops) before it is killed.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import evotorch
import ray
import torch
from evotorch.core import EvaluationActor
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from gfo.errors import GfoError, first_line
from gfo.problem import Context, Evaluation, Problem, Sense
from gfo.spec import RunSpec

#: How often one slice may lose its actor within one call before the run gives up.
MAX_REPLACEMENTS = 3
#: Seconds the actors get to close their problems (stop a vLLM engine) before they are killed.
CLOSE_TIMEOUT_S = 60.0


class _RemoteProblem(evotorch.Problem):
    """What every Ray actor holds: the gfo problem's class and config, built and prepared on first use.

    Only the class and the config travel to the actors (never a prepared problem with its model).
    `dtype=object` because EvoTorch never sees the decision vectors here: gfo sends tensors itself.
    """

    def __init__(self, problem_class: type[Problem], config: Any) -> None:
        evotorch_log = logging.getLogger("evotorch")
        level = evotorch_log.level
        evotorch_log.setLevel(logging.WARNING)  # EvoTorch logs its dtype/device choices at INFO
        try:
            super().__init__(problem_class.sense, dtype=object)
        finally:
            evotorch_log.setLevel(level)
        self._problem_class = problem_class
        self._problem_config = config
        self._problem: Problem | None = None

    @property
    def _nonserialized_attribs(self) -> list[str]:
        return ["_problem"]

    def _prepare(self) -> None:
        # Runs once per actor (EvoTorch's `_start_preparations`); Ray set OMP_NUM_THREADS to the
        # actor's CPUs, torch follows it.
        self._problem = self._problem_class(self._problem_config)
        self._problem.prepare()

    def _ready(self) -> Problem:
        self._start_preparations()
        assert self._problem is not None
        return self._problem

    # The methods the driver calls through `EvaluationActor.call`.

    def gfo_prepare(self) -> int:
        self._ready()
        return os.getpid()

    def gfo_evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        return self._ready().evaluate(population, context)

    def gfo_heldout(self, solutions: torch.Tensor) -> torch.Tensor | Evaluation:
        return self._ready().evaluate_heldout(solutions)

    def gfo_driver_state(self) -> Any:
        return self._ready().driver_state()

    def gfo_close(self) -> None:
        if self._problem is not None:
            self._problem.close()


class RayEvaluator:
    """Evaluates each generation's population split over `spec.run.actors` Ray actors.

    With `run.ray_address` it joins that cluster ("auto": the one `ray start --head` started on
    this machine); otherwise it reuses a Ray instance already running in this process, or starts a
    local one (all CPUs, no dashboard, session files under the system temp folder) and shuts it
    down in `close()`.
    """

    def __init__(self, problem: Problem, spec: RunSpec) -> None:
        run = spec.run
        if run.actors < 1:
            raise GfoError(f"run.actors must be >= 1 for Ray evaluation; got {run.actors}")
        self.sense: Sense = problem.sense
        self.seed = run.seed
        self.restarts = 0  # actors replaced so far
        self._owns_ray = _connect(run.ray_address)
        self._actors: list[Any] = []
        try:
            self._options = _actor_options(run.actors, run.gpus_per_actor)
            self._remote = _RemoteProblem(type(problem), problem.config)
            self._incarnations = [0] * run.actors
            self._actors = [self._spawn(i) for i in range(run.actors)]
            # Every actor loads the model now, in parallel; errors (a bad model path) surface here.
            self._map("gfo_prepare", [() for _ in self._actors])
            [state] = self._map("gfo_driver_state", [()])  # actor 0's; the driver prepares nothing
            if state is not None:
                problem.adopt_driver_state(state)
        except BaseException:
            self.close()
            raise

    @property
    def actors(self) -> list[Any]:
        """The current actor handles (replacements included), one per slice."""
        return list(self._actors)

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        bounds = _slices(len(population), len(self._actors))
        parts = self._map("gfo_evaluate", [(population[a:b], context) for a, b in bounds])
        return _join(parts, [a for a, _ in bounds], self.sense)

    def evaluate_heldout(self, solutions: torch.Tensor) -> torch.Tensor | Evaluation:
        bounds = _slices(len(solutions), len(self._actors))
        parts = self._map("gfo_heldout", [(solutions[a:b],) for a, b in bounds])
        if all(isinstance(p, Evaluation) for p in parts):  # the first slice's first row is the first row
            return Evaluation.concat(parts)
        return torch.cat([p.fitness if isinstance(p, Evaluation) else torch.as_tensor(p) for p in parts])

    def close(self) -> None:
        """Close every actor's problem (at most `CLOSE_TIMEOUT_S`), kill the actors, stop Ray if ours."""
        if self._actors:
            calls = [actor.call.remote("gfo_close", [], {}) for actor in self._actors]
            try:
                ray.get(calls, timeout=CLOSE_TIMEOUT_S)
            except (RayActorError, RayTaskError, GetTimeoutError) as exc:  # the kill below still frees it
                warnings.warn(f"a Ray actor did not close its problem: {first_line(exc)}", stacklevel=2)
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    # ------------------------------------------------------------------ internals

    def _spawn(self, index: int) -> Any:
        # EvoTorch seeds the actor's global RNGs; gfo problems draw their randomness from the
        # Context, so these seeds only keep stray global-RNG use reproducible.
        k = self._incarnations[index]
        seeds = tuple((self.seed + 1_000_003 * (index + 1) + 4 * k + j) % 2**32 for j in range(4))
        return EvaluationActor.options(**self._options).remote(self._remote, index, seeds, {})

    def _map(self, method: str, pieces: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run `method(*piece)` with piece i on actor i; replace actors that die and run their piece again."""
        pending = {self._actors[i].call.remote(method, list(args), {}): i for i, args in enumerate(pieces)}
        results: list[Any] = [None] * len(pieces)
        losses = [0] * len(pieces)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                results[i] = ray.get(ready[0])
            except RayTaskError as exc:
                if isinstance(exc.cause, GfoError):  # one line for the CLI, not Ray's wrapped traceback
                    raise GfoError(str(exc.cause)) from None
                raise
            except RayActorError as exc:
                losses[i] += 1
                if losses[i] > MAX_REPLACEMENTS:
                    raise GfoError(
                        f"Ray actor {i} died {losses[i]} times running {method}; "
                        f"see the Ray logs (out of memory?): {first_line(exc)}"
                    ) from None
                warnings.warn(
                    f"Ray actor {i} died ({first_line(exc)}); replacing it and running its share again",
                    stacklevel=2,
                )
                ray.kill(self._actors[i], no_restart=True)
                self._incarnations[i] += 1
                self._actors[i] = self._spawn(i)
                self.restarts += 1
                pending[self._actors[i].call.remote(method, list(pieces[i]), {})] = i
        return results


def _connect(address: str | None) -> bool:
    """Join or start Ray; True if this evaluator must shut it down again."""
    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise GfoError(
                f"could not join the Ray cluster at run.ray_address={address!r} ({first_line(exc)}); "
                "start one with `ray start --head` or leave --ray-address out for a local instance"
            ) from None
        return True
    temp = Path(tempfile.gettempdir()) / f"gfo-ray-{os.getuid()}"
    try:
        ray.init(num_cpus=os.cpu_count() or 1, _temp_dir=str(temp), include_dashboard=False)
    except Exception as exc:  # Ray raises a plain Exception when its start-up times out
        raise GfoError(
            f"could not start a local Ray instance ({first_line(exc)}); the machine may be too busy "
            "for Ray's 30 s start-up limit: retry, or run without --actors"
        ) from None
    return True


def _check_reachable(address: str) -> None:
    """Fail fast on a host:port nobody listens on (Ray itself retries for many minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise GfoError(
            f"no Ray cluster answers at run.ray_address={address!r} ({exc.strerror or exc}); "
            "start one with `ray start --head`, or use --ray-address auto on its head node"
        ) from None


def _actor_options(actors: int, gpus_per_actor: float) -> dict[str, Any]:
    """Ray options of one actor: GPUs as asked, and the most CPUs each that still lets all actors fit."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    cpus = [int(res.get("CPU", 0)) for res in nodes]
    if sum(cpus) < actors:
        raise GfoError(
            f"run.actors={actors} but the Ray cluster has {sum(cpus)} CPUs; "
            f"use --actors {max(1, sum(cpus))} or add nodes (`ray start --address ...`)"
        )
    per_actor = max(c for c in range(1, max(cpus) + 1) if sum(n // c for n in cpus) >= actors)
    options: dict[str, Any] = {"num_cpus": per_actor}
    if gpus_per_actor > 0:
        gpus = sum(float(res.get("GPU", 0)) for res in nodes)
        if gpus < actors * gpus_per_actor - 1e-9:
            raise GfoError(
                f"{actors} actors x {gpus_per_actor} GPUs need {actors * gpus_per_actor:g} GPUs but the "
                f"Ray cluster has {gpus:g}; lower --actors or --gpus-per-actor"
            )
        options["num_gpus"] = gpus_per_actor
    return options


def _slices(size: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) slices of `size` rows, at most `parts`, sizes differing by at most one."""
    count = max(1, min(parts, size))
    base, extra = divmod(size, count)
    bounds, start = [], 0
    for k in range(count):
        stop = start + base + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _join(parts: list[Evaluation], starts: list[int], sense: Sense) -> Evaluation:
    """Concatenate the slices' evaluations; keep the samples of the slice holding the best candidate.

    Samples are a few records for the log: keeping one slice's keeps their number independent of
    the actor count, and for a problem that samples its best candidate (LLMProblem) gives the same
    records as one process. A sample's `candidate` index is made population-wide.
    """
    joined = Evaluation.concat(parts)
    fitness = joined.fitness.double()
    fitness = torch.where(torch.isnan(fitness), math.inf if sense == "min" else -math.inf, fitness)
    best = int(fitness.argmin() if sense == "min" else fitness.argmax())
    which = max(k for k, start in enumerate(starts) if start <= best)
    offset = starts[which]
    joined.samples = [
        {**s, "candidate": s["candidate"] + offset} if isinstance(s.get("candidate"), int) else s
        for s in parts[which].samples
    ]
    return joined
