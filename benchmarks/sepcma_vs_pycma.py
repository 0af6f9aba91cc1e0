"""Diagonal CMA-ES in gfo (`sep-cmaes`, EvoTorch) against pycma's `CMA_diagonal=True`.

Evaluations needed to reach f < target on the separable ellipsoid (condition 1e6), same dimension,
same population size, same start (x0 = 3, sigma0 = 2), several seeds, side by side in one run.

    python benchmarks/sepcma_vs_pycma.py [--dim 30] [--seeds 5] [--target 1e-8] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import cma
import numpy as np
import torch

from gfo.algorithms import SearchSpec, default_popsize
from gfo.registry import ALGORITHMS
from problems.functions import Ellipsoid

X0, SIGMA0 = 3.0, 2.0


def gfo_evals(dim: int, popsize: int, seed: int, target: float, budget: int) -> int | None:
    cls = ALGORITHMS.get("sep-cmaes")
    algo = cls(cls.Config(popsize=popsize), SearchSpec("min", dim, torch.full((dim,), X0), SIGMA0), seed)
    evals = 0
    while evals < budget:
        x = algo.ask()
        f = Ellipsoid.f(x.double())
        evals += len(x)
        if float(f.min()) < target:
            return evals
        algo.tell(x, f)
    return None


def pycma_evals(dim: int, popsize: int, seed: int, target: float, budget: int) -> int | None:
    opts = {
        "CMA_diagonal": True,
        "popsize": popsize,
        "seed": seed + 1,
        "verbose": -9,
        "maxfevals": budget,
        "ftarget": target,
        "tolfun": 0,
        "tolx": 0,
        "tolfunhist": 0,
        "tolflatfitness": 10**9,
    }
    es = cma.CMAEvolutionStrategy(np.full(dim, X0), SIGMA0, opts)
    while not es.stop():
        xs = es.ask()
        fs = [float(cma.ff.elli(x)) for x in xs]
        es.tell(xs, fs)
        if min(fs) < target:
            return es.countevals
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--target", type=float, default=1e-8)
    parser.add_argument("--popsize", type=int, default=None, help="default 4 + 3 ln n, as both libraries")
    parser.add_argument("--budget", type=int, default=200_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    popsize = args.popsize or default_popsize(args.dim)
    rows = []
    for name, fn in (("gfo sep-cmaes", gfo_evals), ("pycma CMA_diagonal", pycma_evals)):
        started = time.perf_counter()
        evals = [fn(args.dim, popsize, s, args.target, args.budget) for s in range(args.seeds)]
        reached = [e for e in evals if e is not None]
        rows.append(
            {
                "method": name,
                "evaluations": evals,
                "reached": f"{len(reached)}/{args.seeds}",
                "median": statistics.median(reached) if reached else None,
                "seconds": time.perf_counter() - started,
            }
        )
    ratio = rows[0]["median"] / rows[1]["median"] if rows[0]["median"] and rows[1]["median"] else None
    print(f"ellipsoid dim {args.dim}, popsize {popsize}, target {args.target:g}, seeds {args.seeds}")
    print(f"{'method':<22}{'reached':>9}{'median evals':>14}{'seconds':>9}  per seed")
    for r in rows:
        median = r["median"] or "-"
        print(f"{r['method']:<22}{r['reached']:>9}{median:>14}{r['seconds']:>9.1f}  {r['evaluations']}")
    print(f"ratio gfo / pycma (median evaluations): {ratio:.3f}" if ratio else "ratio: n/a")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"dim": args.dim, "popsize": popsize, "target": args.target, "rows": rows, "ratio": ratio},
                fh,
                indent=2,
            )
    sys.exit(0 if ratio is not None and ratio <= 1.5 else 1)


if __name__ == "__main__":
    main()
