"""The Python API: `gfo.search` on a Problem instance, `gfo_llm.search` on a Task or a reward
function, their docstring examples, and the README's Python example, each run for real."""

from __future__ import annotations

import doctest
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import gfo
import gfo_llm
from gfo.errors import ConfigError, GfoError
from gfo.problem import Context, Evaluation, Problem, Sense

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ShiftConfig:
    dim: int = 4
    shift: float = 1.5


class Shifted(Problem):
    """An unregistered problem: the squared distance to (shift, ..., shift)."""

    sense: ClassVar[Sense] = "min"
    Config: ClassVar[type] = ShiftConfig

    def __init__(self, config: ShiftConfig) -> None:
        super().__init__(config)
        self.solution_length = config.dim

    def evaluate(self, population: torch.Tensor, context: Context) -> Evaluation:
        return Evaluation(fitness=((population.double() - self.config.shift) ** 2).sum(dim=1))


def test_search_takes_a_problem_instance_and_creates_the_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "shifted"
    result = gfo.search(
        Shifted(ShiftConfig()), "sep-cmaes", out=out, generations=40, popsize=8, stdev_init=1.0
    )
    assert isinstance(result, gfo.Summary) and result.out == out
    assert result.generations == 40 and result.evaluations == 40 * 8
    assert result.best < 1e-3 and result.data["problem"] == "Shifted"
    assert result.best_solution is not None
    torch.testing.assert_close(result.best_solution, torch.full((4,), 1.5), atol=0.05, rtol=0)
    assert (out / "metrics.jsonl").is_file() and (out / "config.toml").is_file()
    # The folder holds a run now: a second search there is refused unless it resumes or overwrites.
    with pytest.raises(GfoError, match="already holds a run"):
        gfo.search(Shifted(ShiftConfig()), "sep-cmaes", out=out, generations=40)
    more = gfo.search(Shifted(ShiftConfig()), "sep-cmaes", out=out, generations=60, popsize=8, resume=True)
    assert more.generations == 60 and more.best <= result.best


def test_resume_keeps_the_runs_seed_and_algorithm_and_refuses_other_problem_settings(tmp_path: Path) -> None:
    out = tmp_path / "r"
    gfo.search(Shifted(ShiftConfig()), "sep-cmaes", out=out, generations=4, popsize=8, seed=3)
    # Neither the algorithm nor the seed repeated: the run's own, not the defaults (pgpe, 0).
    more = gfo.search(Shifted(ShiftConfig()), out=out, generations=6, resume=True)
    assert more.generations == 6 and more.data["algorithm"] == "sep-cmaes"
    assert "seed = 3" in (out / "config.toml").read_text()
    differ = r"settings differ from the run's: shift \(the run's 1.5, given 2.0\)"
    with pytest.raises(ConfigError, match=differ):
        gfo.search(Shifted(ShiftConfig(shift=2.0)), out=out, generations=8, resume=True)


def test_search_by_name_routes_each_setting_to_its_section(tmp_path: Path) -> None:
    result = gfo.search("sphere", "pgpe", out=tmp_path / "s", generations=5, dim=3, center_learning_rate=0.5)
    assert result.data["solution_length"] == 3 and result.generations == 5
    with pytest.raises(ConfigError, match=r"search\(\): dimm is not a setting here \(known: .*dim"):
        gfo.search("sphere", "pgpe", out=tmp_path / "t", dimm=3)
    with pytest.raises(ConfigError, match=r"problem must be a gfo.Problem instance .*; got int"):
        gfo.search(3, "pgpe", out=tmp_path / "u")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'Shifted' is not registered"):
        gfo.search(Shifted(ShiftConfig()), "pgpe", out=tmp_path / "v", actors=2)
    assert not (tmp_path / "t").exists() and not (tmp_path / "v").exists()  # refused before any file


def test_llm_search_with_a_task_class(tiny_model_dir: Path, tmp_path: Path) -> None:
    from problems.arithmetic import Arithmetic

    result = gfo_llm.search(
        Arithmetic, model=tiny_model_dir, generations=1, popsize=2, batch_size=2, max_new_tokens=4,
        eval_limit=2, dtype="fp32", out=tmp_path / "arith",
    )  # fmt: skip
    assert result.data["task"] == "arithmetic" and result.data["model"] == str(tiny_model_dir)
    assert result.exported == tmp_path / "arith" / "adapter"
    with pytest.raises(ConfigError, match="train= and test= go with a reward function"):
        gfo_llm.search(Arithmetic, train=[{"prompt": "x"}], out=tmp_path / "no")


def test_reward_task_refuses_examples_without_prompts() -> None:
    with pytest.raises(ConfigError, match="train must be a non-empty list of dicts with a 'prompt' string"):
        gfo_llm.reward_task(lambda c, e: [0.0] * len(c), [{"question": "x"}], [{"prompt": "y"}])
    with pytest.raises(ConfigError, match="a reward function needs train= and test= examples"):
        gfo_llm.search(lambda c, e: [0.0] * len(c))


@pytest.mark.parametrize("module", ["gfo._api", "gfo_llm._api"])
def test_docstring_examples_run(module: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    import importlib

    globs = {"tmp": tmp_path, "tiny_model_dir": tiny_model_dir}
    failures, tried = doctest.testmod(importlib.import_module(module), extraglobs=globs, report=True)
    assert tried > 0 and failures == 0


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ```python block of README.md, run in order in one namespace in an empty folder."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "README.md has no ```python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # our own file, not model output
    assert os.listdir(tmp_path), "the README example wrote no run folder"
