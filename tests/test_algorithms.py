"""Conformance suite: every registered algorithm, through the same interface, no name branching."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from gfo.algorithms import SearchSpec
from gfo.errors import ConfigError
from gfo.registry import ALGORITHMS
from problems.functions import Sphere

NAMES = ALGORITHMS.names()


def make(name: str, n: int = 20, seed: int = 0, sense: str = "min", **hp: object):
    cls = ALGORITHMS.get(name)
    spec = SearchSpec(sense, n, torch.full((n,), 3.0), 2.0)  # type: ignore[arg-type]
    return cls(cls.Config(**hp), spec, seed)


def sphere_run(name: str, generations: int, seed: int = 0) -> tuple[float, float]:
    algo = make(name, seed=seed)
    first_mean, best = math.nan, math.inf
    for g in range(generations):
        x = algo.ask()
        f = Sphere.f(x.double())
        if g == 0:
            first_mean = float(f.mean())
        best = min(best, float(f.min()))
        algo.tell(x, f)
    return first_mean, best


def test_all_builtins_registered() -> None:
    assert {"es", "pgpe", "snes", "xnes", "cmaes", "sep-cmaes", "cem"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_ask_shape_and_center(name: str) -> None:
    algo = make(name, n=7)
    x = algo.ask()
    assert x.shape == (algo.popsize, 7)
    assert torch.isfinite(x).all()
    assert torch.allclose(algo.center(), torch.full((7,), 3.0))


@pytest.mark.parametrize("name", NAMES)
def test_sphere_reduced_1000x_in_300_generations(name: str) -> None:
    """The defaults reduce the 20-d sphere 1000x (first mean / final best) in 300 generations."""
    first_mean, best = sphere_run(name, 300)
    assert first_mean / best >= 1000, (name, first_mean, best)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_numbers(name: str) -> None:
    assert sphere_run(name, 15, seed=3) == sphere_run(name, 15, seed=3)
    assert sphere_run(name, 15, seed=3) != sphere_run(name, 15, seed=4)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    a = make(name, n=10, seed=1)
    for _ in range(5):
        x = a.ask()
        a.tell(x, Sphere.f(x))
    b = make(name, n=10, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        xa, xb = a.ask(), b.ask()
        assert torch.equal(xa, xb)
        a.tell(xa, Sphere.f(xa))
        b.tell(xb, Sphere.f(xb))
    assert torch.equal(a.center(), b.center())


@pytest.mark.parametrize("name", NAMES)
def test_maximization_is_handled_by_the_declared_sense(name: str) -> None:
    """Maximizing -f must follow the same path as minimizing f: the sense is honoured once, in EvoTorch."""
    lo, hi = make(name, n=5, seed=2), make(name, n=5, seed=2, sense="max")
    for _ in range(10):
        x_lo, x_hi = lo.ask(), hi.ask()
        assert torch.allclose(x_lo, x_hi)
        lo.tell(x_lo, Sphere.f(x_lo))
        hi.tell(x_hi, -Sphere.f(x_hi))
    assert torch.allclose(lo.center(), hi.center(), atol=1e-5)


# gfo's defaults for n = 8, spread 2, spelled out as EvoTorch's class arguments.
EVOTORCH_EQUIVALENTS = [
    # name, EvoTorch class, its arguments, lazy (update applied at the next step()), bit-identical
    (
        "es",
        "PGPE",
        {
            "popsize": 16,
            "stdev_init": 0.05,
            "center_learning_rate": 0.05,
            "stdev_learning_rate": 0.0,
            "optimizer": "adam",
            "ranking_method": "centered",
            "symmetric": True,
            "stdev_max_change": None,
        },
        True,
        True,
    ),
    (
        "pgpe",
        "PGPE",
        {
            "popsize": 32,
            "stdev_init": 2.0,
            "center_learning_rate": 0.1,
            "stdev_learning_rate": 0.2,
            "optimizer": "clipup",
            "optimizer_config": {"max_speed": 0.2, "momentum": 0.9},
            "ranking_method": "centered",
            "symmetric": True,
            "stdev_max_change": 0.2,
        },
        True,
        False,  # functional ClipUp clips in another float order: a few ulps
    ),
    (
        "cem",
        "CEM",
        {"popsize": 32, "stdev_init": 2.0, "parenthood_ratio": 0.25, "stdev_max_change": 0.1},
        True,
        True,
    ),
    ("snes", "SNES", {"stdev_init": 2.0}, True, True),
    ("xnes", "XNES", {"stdev_init": 2.0, "popsize": 32, "stdev_learning_rate": 2.0}, True, True),
    ("cmaes", "CMAES", {"stdev_init": 2.0}, False, True),
    ("sep-cmaes", "CMAES", {"stdev_init": 2.0, "separable": True}, False, True),
]


def test_every_builtin_has_an_evotorch_equivalence_case() -> None:
    assert {case[0] for case in EVOTORCH_EQUIVALENTS} == {
        "es",
        "pgpe",
        "snes",
        "xnes",
        "cmaes",
        "sep-cmaes",
        "cem",
    }


@pytest.mark.parametrize("sense", ["min", "max"])
@pytest.mark.parametrize(("name", "evotorch_name", "kwargs", "lazy", "exact"), EVOTORCH_EQUIVALENTS)
def test_ask_tell_equals_evotorchs_own_step(
    name: str, evotorch_name: str, kwargs: dict, lazy: bool, exact: bool, sense: str
) -> None:
    """Same seed, same settings: every generation gfo asks the population EvoTorch's class `step()`
    samples, and holds the same centre and stdev (bit for bit; PGPE to 1e-5, ClipUp's rounding).

    EvoTorch's Gaussian algorithms update lazily (step k applies the update of generation k-1, then
    samples): their state after step k is ours before the k-th tell. CMA-ES updates within step()."""
    import evotorch
    import evotorch.algorithms as ea

    logging.getLogger("evotorch").setLevel(logging.WARNING)
    n, sign = 8, 1.0 if sense == "min" else -1.0

    def f(x: torch.Tensor) -> torch.Tensor:
        return sign * (x**2).sum(-1)

    problem = evotorch.Problem(sense, f, solution_length=n, initial_bounds=(-1, 1), vectorized=True, seed=5)
    theirs = getattr(ea, evotorch_name)(problem, center_init=torch.full((n,), 3.0), **kwargs)
    ours = make(name, n=n, seed=5, sense=sense)

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.equal(a, b) if exact else torch.allclose(a, b, rtol=0, atol=1e-5)

    def same_state() -> bool:
        state = ours.state_dict()
        if evotorch_name == "CMAES":
            return all(same(state[k], getattr(theirs, k)) for k in ("m", "sigma", "C"))
        return same(ours.center(), theirs.status["center"]) and same(
            state["distribution"]["sigma"], theirs.status["stdev"]
        )

    for generation in range(30):
        theirs.step()
        x = ours.ask()
        assert same(x, theirs.population.values), (name, generation)
        if lazy:
            assert same_state(), (name, generation)
        ours.tell(x, f(x))
        if not lazy:
            assert same_state(), (name, generation)


def test_the_adapter_names_no_evotorch_internals() -> None:
    """EvoTorch's private names are reached only through `gfo._evotorch_private`."""
    import ast
    from pathlib import Path

    import gfo.algorithms

    # every module of the package, as one tree
    modules = sorted(Path(gfo.algorithms.__file__).parent.glob("*.py"))
    assert len(modules) > 1
    body = [node for path in modules for node in ast.parse(path.read_text()).body]
    tree = ast.Module(body=body, type_ignores=[])
    private_imports = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("evotorch")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    internals = {"_distribution", "_update_distribution", "_ranking_method", "_optimizer", "_optim"}
    internals |= {"_velocity", "_population", "_steps_count", "_first_iter"}
    accessed = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)} & internals
    assert private_imports == [] and accessed == set()


def test_a_checkpoint_of_the_class_based_adapter_still_loads() -> None:
    """ES, PGPE and CEM keep the state layout of the class-based adapter they replaced
    (a "distribution" of mu and sigma, extra keys ignored), so older runs resume."""
    for name, extra in [("pgpe", {"velocity": torch.full((4,), 0.01)}), ("cem", {})]:
        algo = make(name, n=4)
        state = {
            "distribution": {
                "mu": torch.full((4,), 1.5),
                "sigma": torch.full((4,), 0.5),
                "divide_mu_grad_by": "x",
            },
            "rng": torch.Generator().manual_seed(7).get_state(),
            **extra,
        }
        algo.load_state_dict(state)
        assert torch.equal(algo.center(), torch.full((4,), 1.5))
        assert torch.equal(algo.state_dict()["distribution"]["sigma"], torch.full((4,), 0.5))
        for key, value in extra.items():
            assert torch.equal(algo.state_dict()[key], value)


@pytest.mark.parametrize(
    ("name", "hp", "message"),
    [
        ("pgpe", {"popsize": 31}, "popsize must be even"),
        ("es", {"popsize": 1}, "popsize must be >= 2"),
        ("cmaes", {"stdev_init": -1.0}, "stdev_init must be > 0"),
        ("cem", {"parenthood_ratio": 1.5}, "parenthood_ratio must be in (0, 1)"),
        ("pgpe", {"momentum": 1.0}, "momentum must be in [0, 1)"),
    ],
)
def test_bad_hyperparameters_name_the_rule(name: str, hp: dict, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        ALGORITHMS.get(name).Config(**hp)


@pytest.mark.parametrize("name", NAMES)
def test_problem_suggested_popsize_is_used_unless_algo_popsize_is_set(name: str) -> None:
    cls = ALGORITHMS.get(name)
    spec = SearchSpec("min", 20, torch.zeros(20), 1.0, popsize=9)
    suggested = cls(cls.Config(), spec, 0)
    expected = {"es": 10, "pgpe": 10, "cem": 9}.get(name, 9)  # antithetic ones round up to even
    assert suggested.popsize == expected and suggested.ask().shape == (expected, 20)
    assert cls(cls.Config(popsize=12), spec, 0).popsize == 12
    assert cls(cls.Config(), SearchSpec("min", 20, torch.zeros(20), 1.0), 0).popsize != expected


def test_cem_keeps_two_elites_when_a_problem_suggests_a_tiny_population() -> None:
    cls = ALGORITHMS.get("cem")
    spec = SearchSpec("min", 20, torch.zeros(20), 1.0, popsize=4)
    assert cls(cls.Config(parenthood_ratio=0.25), spec, 0).popsize == 8
