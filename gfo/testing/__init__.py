"""Conformance suites for plug-ins, in Optuna's pattern (`optuna/testing/pytest_samplers.py`).

A plug-in's test file subclasses a suite and names what it tests; pytest then runs every check of
the suite against it. gfo's own tests apply the same classes to every registered algorithm and
problem (tests/test_conformance.py):

    from gfo.testing import ProblemConformance

    class TestMyProblem(ProblemConformance):
        problem_cls = MyProblem
        config = MyProblem.Config(dim=5)

The suites' names do not start with `Test`, so pytest collects only the subclasses. Reward tasks
have theirs in `gfo_llm.testing.TaskConformance`: a task is a language-model concept, and gfo
knows none. This package needs pytest, which gfo itself does not.
"""

from __future__ import annotations

from gfo.testing._algorithm import AlgorithmConformance
from gfo.testing._problem import ProblemConformance

__all__ = ["AlgorithmConformance", "ProblemConformance"]
