"""Ray actors (`gfo.parallel`): same results with 1, 2 or N actors, and a dead actor costs no generation.

One local Ray instance with 2 CPUs serves the module; the runs go through the real loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
import torch

ray = pytest.importorskip("ray")

from gfo.errors import GfoError  # noqa: E402
from gfo.loop import VOLATILE, Callback, LocalEvaluator, run  # noqa: E402
from gfo.parallel import RayEvaluator, _check_reachable, _join, _slices  # noqa: E402
from gfo.problem import Context, Evaluation  # noqa: E402
from gfo.registry import PROBLEMS  # noqa: E402
from gfo.spec import RunSpec, resolve  # noqa: E402
from problems.arithmetic import Arithmetic  # noqa: E402
from problems.functions import FunctionConfig, Sphere  # noqa: E402

TIMING = VOLATILE  # times and memory


# ---------------------------------------------------------------- test-only problems


@dataclass(frozen=True)
class CrashConfig(FunctionConfig):
    crash_file: str = field(
        default="", metadata={"help": "an actor that finds this file deletes it and dies"}
    )
    crash_generation: int = 1
    fail_prepare: bool = False


class CrashingSphere(Sphere):
    """The sphere, except that the first actor to reach `crash_generation` dies (os._exit) mid-evaluation."""

    Config: ClassVar[type] = CrashConfig

    def prepare(self) -> None:
        if self.config.fail_prepare:
            raise GfoError("problem.fail_prepare is set; unset it")

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        if self.config.crash_file and context.generation == self.config.crash_generation:
            try:
                os.unlink(self.config.crash_file)  # atomic: exactly one actor dies
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return super().evaluate(population, context)


@dataclass(frozen=True)
class RecordConfig(FunctionConfig):
    record_dir: str = field(default="", metadata={"help": "prepare/close calls leave files here"})
    fail_generation: int = -1


class RecordingSphere(Sphere):
    """The sphere, leaving a file `<event>-<pid>-<n>` per `prepare()` and `close()` call in `record_dir`."""

    Config: ClassVar[type] = RecordConfig

    def _note(self, event: str) -> None:
        folder = Path(self.config.record_dir)
        n = len(list(folder.glob(f"{event}-{os.getpid()}-*")))
        (folder / f"{event}-{os.getpid()}-{n}").touch()

    def prepare(self) -> None:
        self._note("prepare")

    def close(self) -> None:
        self._note("close")

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        if context.generation == self.config.fail_generation:
            raise RuntimeError("evaluate fails on purpose")
        return super().evaluate(population, context)


def calls(folder: Path, event: str, pid: int | None = None) -> int:
    """`event` calls recorded in `folder` by process `pid` (None: by any)."""
    return len(list(folder.glob(f"{event}-{'*' if pid is None else pid}-*")))


class TextTask(Arithmetic):
    """Arithmetic prompts with a reward every completion of a random model earns: a hash of its text."""

    name: ClassVar[str] = "test-parallel-text"

    def reward(self, completions: Sequence[str], examples: Sequence[Any]) -> list[float]:
        return [sum(map(ord, c)) % 101 / 100 for c in completions]


def _register() -> None:
    from gfo_llm.problem import LLMProblem

    for name, cls in (
        ("test-parallel-crash", CrashingSphere),
        ("test-parallel-record", RecordingSphere),
        ("test-parallel-text", LLMProblem.for_task(TextTask)),
    ):
        if name not in PROBLEMS.names():
            PROBLEMS.register(name, cls)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[None]:
    if ray.is_initialized():
        ray.shutdown()
    # The actors unpickle this module's problem classes; workers cannot import a test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=2,
        _temp_dir=str(Path(tempfile.gettempdir()) / f"gfo-ray-{os.getuid()}"),
        include_dashboard=False,
        log_to_driver=False,
    )
    _register()
    yield
    ray.shutdown()


def metrics(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING and not k.endswith("_per_s")} for r in rows]


def run_with(
    spec: RunSpec,
    out: Path,
    *,
    actors: int,
    callbacks: list[Callback] | None = None,
    evaluators: list[RayEvaluator] | None = None,
) -> dict[str, Any]:
    """Run in process (actors=0) or on the module's Ray instance; Ray evaluators land in `evaluators`."""
    out.mkdir(parents=True)
    evaluators = [] if evaluators is None else evaluators

    def make(problem: Any, s: RunSpec) -> Any:
        if actors == 0:
            return LocalEvaluator(problem)
        evaluators.append(RayEvaluator(problem, replace(s, run=replace(s.run, actors=actors))))
        return evaluators[-1]

    return run(spec, out, make_evaluator=make, callbacks=callbacks)


def spec_of(algo: str, problem: str, *overrides: str) -> RunSpec:
    return resolve(algo, problem, overrides=["run.progress=false", *overrides])


# ---------------------------------------------------------------- pure helpers


def test_slices_are_contiguous_balanced_and_cover_everything() -> None:
    assert _slices(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert _slices(2, 4) == [(0, 1), (1, 2)]
    assert _slices(5, 1) == [(0, 5)]
    for size in range(1, 30):
        for parts in range(1, 8):
            bounds = _slices(size, parts)
            sizes = [b - a for a, b in bounds]
            assert bounds[0][0] == 0 and bounds[-1][1] == size
            assert all(bounds[k][1] == bounds[k + 1][0] for k in range(len(bounds) - 1))
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_join_keeps_the_best_slice_samples_with_population_indices() -> None:
    def part(fitness: list[float], best: int) -> Evaluation:
        return Evaluation(
            fitness=torch.tensor(fitness, dtype=torch.float64),
            info={"x": torch.tensor(fitness)},
            counters={"tokens": float(len(fitness))},
            samples=[{"candidate": best, "text": f"from {fitness}"}],
        )

    joined = _join([part([0.1, 0.5], 1), part([0.9, float("nan")], 0)], [0, 2], "max")
    assert joined.fitness.tolist()[:3] == [0.1, 0.5, 0.9]
    assert joined.counters == {"tokens": 4.0}
    assert joined.samples == [{"candidate": 2, "text": "from [0.9, nan]"}]
    joined = _join([part([0.1, 0.5], 1), part([0.9, 0.3], 1)], [0, 2], "min")
    assert joined.samples == [{"candidate": 1, "text": "from [0.1, 0.5]"}]


def test_an_address_nobody_answers_fails_fast() -> None:
    with pytest.raises(GfoError, match=r"no Ray cluster answers at run.ray_address='127.0.0.1:1'"):
        _check_reachable("127.0.0.1:1")
    _check_reachable("auto")  # left to Ray


def test_ray_settings_without_actors_are_refused(tmp_path: Path) -> None:
    for setting in ("run.ray_address=auto", "run.gpus_per_actor=1"):
        with pytest.raises(GfoError, match="take effect with Ray actors only; add --actors N"):
            run(spec_of("pgpe", "sphere", setting), tmp_path / setting)


# ---------------------------------------------------------------- on Ray


def test_two_actors_match_the_in_process_run(tmp_path: Path) -> None:
    # popsize 7: the two actors get uneven slices (4 and 3 candidates)
    spec = spec_of(
        "sep-cmaes", "rastrigin", "problem.dim=6", "algo.popsize=7", "run.generations=5", "run.seed=3"
    )
    evaluators: list[RayEvaluator] = []
    summaries = [run_with(spec, tmp_path / f"a{n}", actors=n, evaluators=evaluators) for n in (0, 2)]
    reference = metrics(tmp_path / "a0")
    assert len(reference) == 5
    assert metrics(tmp_path / "a2") == reference
    assert summaries[1]["best"] == summaries[0]["best"]
    assert len(evaluators[0].actors) == 0, "close() must release the actors"
    assert evaluators[0].restarts == 0


def test_an_actor_that_dies_mid_generation_is_replaced(tmp_path: Path) -> None:
    marker = tmp_path / "crash-now"
    marker.touch()
    args = ("problem.dim=5", "run.generations=4", "run.seed=1")
    crashing = spec_of("sep-cmaes", "test-parallel-crash", *args, f"problem.crash_file={marker}")
    evaluators: list[RayEvaluator] = []
    with pytest.warns(UserWarning, match="Ray actor . died"):
        summary = run_with(crashing, tmp_path / "crash", actors=2, evaluators=evaluators)
    assert not marker.exists(), "no actor reached the crash"
    assert evaluators[0].restarts == 1
    assert summary["generations"] == 4
    run_with(spec_of("sep-cmaes", "test-parallel-crash", *args), tmp_path / "ref", actors=0)
    assert metrics(tmp_path / "crash") == metrics(tmp_path / "ref")


def test_a_problem_error_in_an_actor_is_one_gfo_error() -> None:
    spec = spec_of("pgpe", "test-parallel-crash", "problem.fail_prepare=true", "run.actors=1")
    problem = PROBLEMS.get(spec.problem_name)(spec.problem)
    with pytest.raises(GfoError, match=r"^problem.fail_prepare is set; unset it$"):
        RayEvaluator(problem, spec)


def test_more_actors_than_cpus_is_refused() -> None:
    spec = spec_of("pgpe", "sphere", "run.actors=3")
    with pytest.raises(GfoError, match=r"run.actors=3 but the Ray cluster has 2 CPUs"):
        RayEvaluator(PROBLEMS.get("sphere")(spec.problem), spec)
    spec = spec_of("pgpe", "sphere", "run.actors=1", "run.gpus_per_actor=1")
    with pytest.raises(GfoError, match="need 1 GPUs but the Ray cluster has 0"):
        RayEvaluator(PROBLEMS.get("sphere")(spec.problem), spec)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gfo_llm.testing import tiny_model

    model, tokenizer = tiny_model()
    model = cast(Any, model)  # a transformers model: has save_pretrained
    directory = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def llm_spec(model_dir: Path) -> RunSpec:
    return spec_of(
        "pgpe",
        "test-parallel-text",
        f"problem.model={model_dir}",
        "problem.dtype=fp32",
        "problem.batch_size=2",
        "problem.max_new_tokens=8",
        "problem.eval_limit=4",
        "problem.stdev=1.0",
        "algo.popsize=4",
        "run.generations=2",
    )


def test_llm_problem_one_and_two_actors_match(tmp_path: Path, tiny_dir: Path) -> None:
    from safetensors.torch import load_file

    from gfo_llm.model import weight_loads

    spec = llm_spec(tiny_dir)
    loads = weight_loads()
    for n in (1, 2):
        run_with(spec, tmp_path / f"a{n}", actors=n)
    # The driver sized the space from the config and exported from actor 0's space: no model here.
    assert weight_loads() == loads
    run_with(spec, tmp_path / "a0", actors=0)
    assert weight_loads() == loads + 1
    one, two = metrics(tmp_path / "a1"), metrics(tmp_path / "a2")
    assert one == two == metrics(tmp_path / "a0")
    exported = [load_file(tmp_path / f"a{n}" / "adapter" / "adapter_model.safetensors") for n in (0, 1, 2)]
    assert exported[0].keys() == exported[1].keys() == exported[2].keys()
    assert all(torch.equal(exported[0][k], e[k]) for e in exported[1:] for k in exported[0])
    assert len({r["best"] for r in one} | {r["mean"] for r in one}) > 1, "the reward does not vary"
    assert "heldout" in one[-1] and one[-1]["generated_tokens"] > 0
    samples = [(tmp_path / f"a{n}" / "samples.jsonl").read_text() for n in (1, 2)]
    assert samples[0] == samples[1] and samples[0]


def test_tune_on_actors_loads_no_model_in_the_driver(tmp_path: Path, tiny_dir: Path) -> None:
    from gfo.tune import TuneSettings, tune
    from gfo_llm.model import weight_loads

    spec = llm_spec(tiny_dir)
    spec = replace(spec, run=replace(spec.run, actors=1, generations=1))
    loads = weight_loads()
    result = tune(spec, TuneSettings(trials=1, out=tmp_path, pruner="none"), log=lambda _: None)
    assert weight_loads() == loads, "the study's process read model weights"
    assert result.finished == 1 and result.best.state == "COMPLETE"
    assert metrics(tmp_path / "trial-0000")[0]["generated_tokens"] > 0  # the actor did generate


# ---------------------------------------------------------------- close()


def test_every_run_closes_its_problem_however_it_ends(tmp_path: Path) -> None:
    from gfo.loop import Interrupted

    record = tmp_path / "calls"
    record.mkdir()
    common = ("problem.dim=3", "run.generations=3", f"problem.record_dir={record}")
    me = os.getpid()
    run_with(spec_of("pgpe", "test-parallel-record", *common), tmp_path / "done", actors=0)
    assert (calls(record, "prepare", me), calls(record, "close", me)) == (1, 1)

    failing = spec_of("pgpe", "test-parallel-record", *common, "problem.fail_generation=1")
    with pytest.raises(RuntimeError, match="evaluate fails on purpose"):
        run_with(failing, tmp_path / "error", actors=0)
    assert (calls(record, "prepare", me), calls(record, "close", me)) == (2, 2)

    class Interrupt(Callback):
        def on_generation(self, record: dict[str, Any]) -> None:
            if record["generation"] == 0:
                os.kill(os.getpid(), signal.SIGINT)  # the loop stops at the next safe point

    with pytest.raises(Interrupted):
        run_with(
            spec_of("pgpe", "test-parallel-record", *common),
            tmp_path / "signal",
            actors=0,
            callbacks=[Interrupt()],
        )
    assert (calls(record, "prepare", me), calls(record, "close", me)) == (3, 3)


def test_actors_close_their_problems_and_the_driver_prepares_none(tmp_path: Path) -> None:
    record = tmp_path / "calls"
    record.mkdir()
    spec = spec_of(
        "pgpe", "test-parallel-record", "problem.dim=3", "run.generations=2", f"problem.record_dir={record}"
    )
    run_with(spec, tmp_path / "run", actors=2)
    me = os.getpid()
    assert (calls(record, "prepare", me), calls(record, "close", me)) == (0, 1)  # the loop's close
    actors = {int(path.name.split("-")[1]) for path in record.glob("prepare-*")}
    assert len(actors) == 2 and me not in actors
    assert all((calls(record, "prepare", a), calls(record, "close", a)) == (1, 1) for a in actors)


def test_tune_closes_the_problem_of_every_trial(tmp_path: Path) -> None:
    from gfo.tune import TuneSettings, tune

    record = tmp_path / "calls"
    record.mkdir()
    spec = spec_of(
        "pgpe", "test-parallel-record", "problem.dim=3", "run.generations=2", f"problem.record_dir={record}"
    )
    tune(spec, TuneSettings(trials=2, out=tmp_path / "study", pruner="none"), log=lambda _: None)
    # Each trial prepares and closes its own problem; the one the study was sized with is closed too.
    assert (calls(record, "prepare"), calls(record, "close")) == (2, 3)


@pytest.mark.slow
def test_llm_actor_killed_between_generations_reloads_the_model(tmp_path: Path, tiny_dir: Path) -> None:
    spec = llm_spec(tiny_dir)
    evaluators: list[RayEvaluator] = []

    class KillFirstActor(Callback):
        def on_generation(self, record: dict[str, Any]) -> None:
            if record["generation"] == 0:
                ray.kill(evaluators[0].actors[0], no_restart=True)

    with pytest.warns(UserWarning, match="Ray actor 0 died"):
        run_with(spec, tmp_path / "killed", actors=2, callbacks=[KillFirstActor()], evaluators=evaluators)
    assert evaluators[0].restarts == 1
    run_with(spec, tmp_path / "ref", actors=0)
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "ref")


@pytest.mark.slow
def test_cli_starts_and_stops_its_own_ray(tmp_path: Path) -> None:
    common = [
        "--algo",
        "pgpe",
        "--problem",
        "sphere",
        "--generations",
        "4",
        "--set",
        "problem.dim=4",
        "--quiet",
    ]
    for name, extra in (("local", []), ("ray", ["--actors", "2"])):
        proc = subprocess.run(
            [sys.executable, "-m", "gfo.cli", "run", *common, *extra, "--out", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    assert metrics(tmp_path / "ray") == metrics(tmp_path / "local")
