"""KL to a reference model: exact on the tiny model against two direct full-vocabulary passes; in
`gfo eval` (--kl-to, --compare) and as the search's `problem.kl_coef` (GRPO's beta) term."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import gfo

from gfo.errors import ConfigError
from gfo.problem import Context
from gfo_llm.config import LLMConfig
from gfo_llm.kl import answer_kl
from gfo_llm.model import chat_prompt, load_model

TINY = ("--set", "problem.dtype=fp32", "--set", "problem.max_new_tokens=6", "--set", "problem.rank=4")


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PiSSA-exported adapter (rank 8) of a 2-generation search on the tiny model."""
    out = tmp_path_factory.mktemp("kl") / "run"
    code, err = gfo(
        "run", "--algo", "pgpe", "--problem", "arithmetic", "--popsize", "4", "--generations", "1",
        "--out", str(out), "--quiet", "--set", f"problem.model={tiny_model_dir}", *TINY,
        "--set", "problem.batch_size=2", "--set", "problem.eval_every=0", "--set", "problem.stdev=2.0",
    )  # fmt: skip
    assert code == 0, err
    return out / "adapter"


def direct_kl(
    model_dir: Path, adapter: Path | None, reference: Path | None, prompt: str, answer: list[int]
) -> float:
    """sum over the answer's tokens of KL(p_adapter || p_reference), each model alone, unpadded."""
    from peft import PeftModel

    logps = []
    for path in (adapter, reference):
        model, tokenizer = load_model(str(model_dir), "fp32")
        if path is not None:
            model = PeftModel.from_pretrained(model, str(path))
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([head + answer])).logits[0, len(head) - 1 : -1]
        logps.append(torch.log_softmax(logits.float(), -1))
    return float((logps[0].exp() * (logps[0] - logps[1])).sum())


def test_answer_kl_equals_two_direct_passes(tiny_model_dir: Path, adapter: Path) -> None:
    model, tokenizer = load_model(str(tiny_model_dir), "fp32")
    prompts = [chat_prompt(tokenizer, q) for q in ("What is 2 + 2?", "Name a colour.", "Hi")]
    answers = [[28, 29, 30], [12, 2], [5, 6, 7, 8, 9]]  # different lengths: padding in one batch
    for ref, mine in ((None, adapter), (adapter, None)):
        got = answer_kl(model, tokenizer, mine, ref, prompts, answers)
        for prompt, answer, value in zip(prompts, answers, got, strict=True):
            assert value == pytest.approx(
                direct_kl(tiny_model_dir, mine, ref, prompt, answer), rel=1e-3, abs=1e-6
            )
        assert all(v > 0 for v in got)
    # the model is back as it was (no adapter left in it), and a model is at KL 0 from itself
    assert answer_kl(model, tokenizer, adapter, adapter, prompts, answers) == pytest.approx(
        [0.0] * 3, abs=1e-5
    )
    assert answer_kl(model, tokenizer, None, None, prompts, answers) == [0.0] * 3
    assert not any("lora" in name for name, _ in model.named_modules())


def test_eval_reports_the_kl_to_the_base_model_and_compare_the_kl_to_b(
    tiny_model_dir: Path, adapter: Path, tmp_path: Path
) -> None:
    model = ("--set", f"problem.model={tiny_model_dir}", *TINY)
    code, err = gfo(
        "eval", "--problem", "arithmetic", "--adapter", str(adapter), "--kl-to", "base", "--limit", "3",
        "--out", str(tmp_path / "kl"), "--quiet", *model,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "kl" / "eval.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "kl" / "completions.jsonl").read_text().splitlines()]
    assert result["kl"]["reference"] == "base" and result["kl"]["per_token"] > 0
    total = sum(r["kl"] for r in records)
    assert result["kl"]["per_token"] == pytest.approx(total / sum(len(r["token_ids"]) for r in records))
    assert all(len(r["token_ids"]) == r["tokens"] for r in records)
    assert records[0]["kl"] == pytest.approx(
        direct_kl(tiny_model_dir, adapter, None, records[0]["prompt"], records[0]["token_ids"]), rel=1e-3
    )
    assert err.strip().splitlines()[-1].startswith("KL(the model || the base model) on the model's answers: ")
    # --compare base: the same figure, on A's answers
    code, err = gfo(
        "eval", "--problem", "arithmetic", "--adapter", str(adapter), "--compare", "base", "--limit", "3",
        "--out", str(tmp_path / "cmp"), "--quiet", *model,
    )  # fmt: skip
    assert code == 0, err
    compared = json.loads((tmp_path / "cmp" / "eval.json").read_text())
    assert compared["kl"]["per_token"] == pytest.approx(result["kl"]["per_token"], rel=1e-6)
    assert any(line.startswith("KL(A || the base model) on A's answers: ") for line in err.splitlines())
    code, err = gfo("eval", "--problem", "arithmetic", "--compare", "base", "--kl-to", "base", *model)
    assert code == 2 and err.strip() == "error: --compare B already reports the KL from B; drop --kl-to"


def test_kl_coef_subtracts_beta_times_the_kl_to_the_start(
    tiny_lm: tuple[Any, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """fitness = mean reward - beta x each candidate's KL to the start (per answer token), that KL
    equal to two direct full-vocabulary passes (the candidate's exported adapter and the base model,
    which the PiSSA start is) on the candidate's answers; beta = 0 leaves the fitness and the work
    unchanged."""
    from problems.arithmetic import ArithmeticConfig
    from problems.arithmetic import Problem as Arithmetic

    def evaluate(beta: float) -> tuple[Any, Any]:
        config = ArithmeticConfig(
            model=str(tiny_model_dir), dtype="fp32", rank=4, max_new_tokens=6, batch_size=3, kl_coef=beta
        )
        problem = Arithmetic(config)
        population = problem.initial_center() + 2.0 * torch.randn(
            3, problem.solution_length, generator=torch.Generator().manual_seed(0)
        )
        population[0] = problem.initial_center()
        engine, generated = problem.engine, []
        generate = engine.generate

        def kept(*args: Any, **kwargs: Any) -> Any:  # the answers, to score them directly below
            generated.append((args[1], generate(*args, **kwargs)))
            return generated[-1][1]

        engine.generate = kept  # type: ignore[method-assign]
        result = problem.evaluate(population, Context(generation=0, seed=0))
        problem.export(population[1], tmp_path / str(beta))
        problem.close()
        return result, generated[0]

    (plain, _), (penalized, (prompts, answers)) = evaluate(0.0), evaluate(0.5)
    assert "kl" not in plain.info
    torch.testing.assert_close(penalized.info["reward"], plain.fitness)
    kl = penalized.info["kl"]
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and (kl[1:] > 0).all()  # the start is at KL 0 from itself
    torch.testing.assert_close(penalized.fitness, plain.fitness - 0.5 * kl)
    ids = answers.token_ids[1]
    direct = [
        direct_kl(tiny_model_dir, tmp_path / "0.5" / "adapter", None, p, a)
        for p, a in zip(prompts, ids, strict=True)
    ]
    assert float(kl[1]) == pytest.approx(sum(direct) / sum(len(a) for a in ids), rel=1e-3)


def test_heldout_kl_is_the_centres_exact_kl_on_its_own_heldout_answers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The held-out evaluation reports the first solution's KL to the start (PiSSA: the base model)
    on the answers it generated once, equal to two direct full-vocabulary passes (the exported
    adapter and the base model, unpadded); the start itself is at KL 0."""
    from gfo.problem import Evaluation
    from problems.arithmetic import ArithmeticConfig
    from problems.arithmetic import Problem as Arithmetic

    config = ArithmeticConfig(model=str(tiny_model_dir), dtype="fp32", rank=4, max_new_tokens=6, eval_limit=3)
    problem = Arithmetic(config)
    centre = problem.initial_center()
    moved = centre + 2.0 * torch.randn(centre.shape, generator=torch.Generator().manual_seed(0))
    engine = problem.engine
    generated: list[Any] = []
    generate = engine.generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        generated.append((args, generate(*args, **kwargs)))
        return generated[-1][1]

    engine.generate = counted  # type: ignore[method-assign]
    result = problem.evaluate_heldout(torch.stack([moved, centre]))
    assert isinstance(result, Evaluation) and len(generated) == 1  # the answers are generated once
    (_, prompts, *_), answers = generated[0][0], generated[0][1].token_ids[0]
    assert result.info["kl"][1].isnan() and result.info["kl_per_answer"][1].isnan()
    problem.export(moved, tmp_path)
    sums = [
        direct_kl(tiny_model_dir, tmp_path / "adapter", None, p, a)
        for p, a in zip(prompts, answers, strict=True)
    ]
    tokens = sum(len(a) for a in answers)
    assert float(result.info["kl"][0]) == pytest.approx(sum(sums) / tokens, rel=1e-3)
    assert float(result.info["kl_per_answer"][0]) == pytest.approx(sum(sums) / len(answers), rel=1e-3)
    assert sum(sums) > 0
    start = problem.evaluate_heldout(centre[None])
    assert isinstance(start, Evaluation) and start.info["kl"].tolist() == [0.0]
    problem.close()


def test_gfo_run_logs_the_heldout_kl_in_metrics_progress_and_summary(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code, err = gfo(
        "run", "--algo", "pgpe", "--problem", "arithmetic", "--popsize", "2", "--generations", "3",
        "--out", str(out), "--set", f"problem.model={tiny_model_dir}", *TINY,
        "--set", "problem.batch_size=2", "--set", "problem.eval_every=2", "--set", "problem.eval_limit=2",
        "--set", "problem.stdev=2.0",
    )  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # held-out evaluations after generation 1 (every 2) and at the end (generation 2)
    assert ["heldout_kl" in r for r in rows] == ["heldout" in r for r in rows] == [False, True, True]
    for r in rows[1:]:
        assert r["heldout_kl"] > 0 and r["heldout_kl_per_answer"] >= r["heldout_kl"]  # >= 1 token an answer
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["heldout_kl"], summary["heldout_kl_per_answer"]) == (
        rows[-1]["heldout_kl"],
        rows[-1]["heldout_kl_per_answer"],
    )
    lines = [line for line in err.splitlines() if line.startswith("generation 2: ")]
    assert lines and f"  kl {rows[-1]['heldout_kl']:.4g}  kl per answer " in lines[0]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kl_coef": -0.1}, "problem.kl_coef must be a number >= 0; got -0.1, use e.g. 0.05 (0: no KL term)"),
        ({"kl_coef": 0.1, "fitness": "likelihood"}, "problem.kl_coef needs problem.fitness=reward"),
    ],
)
def test_bad_kl_coef_is_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LLMConfig(**values)


NEGATIVE = "problem.kl_coef must be a number >= 0; got -1.0, use e.g. 0.05 (0: no KL term)"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", NEGATIVE),
        ("nan", "problem.kl_coef must be a number; got NaN"),
        ("inf", "problem.kl_coef must be finite; got inf"),
    ],
)
def test_bad_kl_coef_on_the_command_line_is_one_line_exit_2(tmp_path: Path, value: str, message: str) -> None:
    code, err = gfo("run", "--algo", "pgpe", "--problem", "arithmetic", "--out", str(tmp_path / "r"),
                    "--set", f"problem.kl_coef={value}")  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "r").exists()
