"""Reward tasks: literal completion tables (TRL's test_rewards style), data loading and generation.

What every registered task must do (pure batch rewards in range, references scoring 1, the same
examples every time, disjoint splits, no code run from completions) is
`gfo_llm.testing.TaskConformance`, in tests/test_conformance.py.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from gfo.errors import ConfigError, GfoError
from gfo_llm.config import LLMConfig
from problems._answers import MAX_COMPLETION_CHARS, evaluate_expression, extract_answer, parse_number
from problems.arithmetic import Arithmetic, ArithmeticConfig, steps_right
from problems.countdown import Countdown, CountdownConfig, extract_expression
from problems.gsm8k import GSM8K, GSM8KConfig
from problems.instruct import Instruct

DATA = Path("/work/shared/data")
needs_gsm8k = pytest.mark.skipif(
    not (DATA / "gsm8k" / "test.jsonl").is_file(), reason=f"GSM8K not found under {DATA}"
)

# --- number and answer extraction -------------------------------------------------------------

NUMBERS = [
    ("18", Fraction(18)),
    ("1,000.00", Fraction(1000)),
    ("$1,234", Fraction(1234)),
    ("72.0", Fraction(72)),
    ("-5", Fraction(-5)),
    ("−5", Fraction(-5)),  # Unicode minus
    ("0.25", Fraction(1, 4)),
    ("18.", Fraction(18)),
    (" 7 ", Fraction(7)),
    ("1,2345", None),  # not thousands grouping
    ("eighteen", None),
    ("١٨", None),  # Arabic-Indic digits are not read as numbers
    ("1e5", None),
    ("9" * 41, None),  # longer than MAX_DIGITS
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), NUMBERS)
def test_parse_number(text: str, expected: Fraction | None) -> None:
    assert parse_number(text) == expected


# (completion, extracted answer, strict format used)
ANSWERS = [
    ("She makes 9 * 2 = $18 every day.\n#### 18", Fraction(18), True),
    ("#### 72.0", Fraction(72), True),
    ("####-3", Fraction(-3), True),
    ("The answer is $1,234.", Fraction(1234), False),
    ("**Answer:** 42", Fraction(42), False),
    ("The final answer is: 7 apples. Check: 3 + 4 = 7, and 2 more is 9.", Fraction(7), False),
    ("The temperature drops to -5 degrees.", Fraction(-5), False),
    ("10-4", Fraction(4), False),  # a subtraction, not -4
    ("She has 18 eggs and sells them for 2 dollars each.", Fraction(2), False),  # last number
    ("#### 18\n\nQuestion: Tom has 5 apples.\nAnswer: 5\n#### 5", Fraction(18), True),  # first `####`
    ("The answer is 15. Actually it is 16.", Fraction(15), False),  # marked answer beats last number
    ("It costs $12.00.", Fraction(12), False),
    ("Total: 1,000,000 dollars", Fraction(1_000_000), False),
    ("#### eighteen, i.e. 18", Fraction(18), False),  # no number after ####: flexible fallback
    ("no numbers here", None, False),
    ("", None, False),
    ("#### 18" + " and so on" * MAX_COMPLETION_CHARS, None, False),  # over-long output is not read
]


@pytest.mark.parametrize(("text", "answer", "strict"), ANSWERS)
def test_extract_answer(text: str, answer: Fraction | None, strict: bool) -> None:
    assert extract_answer(text) == (answer, strict)


EXPRESSIONS = [
    ("50 + 7 * 2 - 3", Fraction(61), [50, 7, 2, 3]),
    ("(((1 + 2)))", Fraction(3), [1, 2]),
    ("6 / (1 - 3 / 4)", Fraction(24), [6, 1, 3, 4]),
    ("5 * (5 - 1 / 5)", Fraction(24), [5, 5, 1, 5]),  # exact: no float rounding
    ("-3 + 5", Fraction(2), [3, 5]),
    ("7 / 2", Fraction(7, 2), [7, 2]),
]
NOT_EXPRESSIONS = [
    "1 / 0",
    "1 / (2 - 2)",
    "2 ** 10",
    "2 // 1",
    "7 % 2",
    "1.5 + 2",
    "1_000 + 1",
    "050 + 1",
    "__import__('os').system('true')",
    "abs(-1)",
    "[1, 2]",
    "1 +",
    "",
    "(" * 100 + "1" + ")" * 100,
    "1" + " + 1" * 60,  # over MAX_EXPRESSION_CHARS
    "١ + ٢",
]


@pytest.mark.parametrize(("expression", "value", "literals"), EXPRESSIONS)
def test_evaluate_expression(expression: str, value: Fraction, literals: list[int]) -> None:
    assert evaluate_expression(expression) == (value, literals)


@pytest.mark.parametrize("expression", NOT_EXPRESSIONS)
def test_evaluate_expression_rejects(expression: str) -> None:
    assert evaluate_expression(expression) is None


def test_evaluate_expression_depth_limit() -> None:
    assert evaluate_expression("-" * 31 + "1") is not None
    assert evaluate_expression("-" * 40 + "1") is None


# --- gsm8k ------------------------------------------------------------------------------------

GSM8K_TABLE = [
    ("18", "Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", 1.0),
    ("18", "#### 18.0", 1.0),
    ("1234", "The answer is $1,234.", 1.0),
    ("1000", "#### 1,000.00", 1.0),
    ("-5", "So the balance is -5.", 1.0),
    ("5", "So the balance is -5.", 0.0),
    ("18", "#### 180", 0.0),
    ("18", "#### 18\n\nQuestion: Tom has 5 apples. How many?\n#### 5", 1.0),
    ("18", "She has 18 eggs and sells them for 2 dollars each.", 0.0),
    ("7", "The answer is 7. " * 400, 1.0),  # looping output
    ("18", "#### ١٨", 0.0),
    ("18", "", 0.0),
]


@pytest.mark.parametrize(("target", "completion", "expected"), GSM8K_TABLE)
def test_gsm8k_reward_table(target: str, completion: str, expected: float) -> None:
    task = GSM8K(GSM8K.Config())
    assert task.reward([completion], [{"target": target}]) == [expected]


def test_gsm8k_format_bonus() -> None:
    task = GSM8K(GSM8KConfig(format_bonus=0.1))
    completions = ["#### 18", "#### 19", "The answer is 18.", "no idea"]
    assert task.reward(completions, [{"target": "18"}] * 4) == [1.1, 0.1, 1.0, 0.0]


def test_reward_length_mismatch_is_a_bug() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        GSM8K(GSM8K.Config()).reward(["1", "2"], [{"target": "1"}])


@needs_gsm8k
@pytest.mark.parametrize("split", ["train", "test"])
def test_gsm8k_whole_split_gold_scores_one(split: str) -> None:
    """Every gold solution scores 1; the same solution with the answer off by one scores 0."""
    task = GSM8K(GSM8KConfig(data_dir=str(DATA)))
    examples = task.examples(split)
    assert len(examples) == {"train": 7473, "test": 1319}[split]
    references = [task.reference(example) for example in examples]
    assert not any("<<" in text for text in references)
    assert task.reward(references, examples) == [1.0] * len(examples)
    altered = [
        text.rsplit("####", 1)[0] + f"#### {int(ex['target']) + 1}"
        for text, ex in zip(references, examples, strict=True)
    ]
    assert task.reward(altered, examples) == [0.0] * len(examples)
    # Without the `####` line the flexible last-number rule still finds most gold answers.
    flexible = task.reward([text.rsplit("####", 1)[0] for text in references], examples)
    assert sum(flexible) / len(flexible) > 0.95


@needs_gsm8k
def test_gsm8k_env_var_and_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GFO_DATA_DIR", str(DATA))
    task = GSM8K(GSM8K.Config())
    example = task.examples("test")[0]
    assert example["target"] == "18"
    assert example["question"] in task.prompt(example) and "#### <number>" in task.prompt(example)
    assert task.reference(example).endswith("#### 18") and "<<16-3-4=9>>" in example["answer"]


def test_gsm8k_targets_drop_commas(tmp_path: Path) -> None:
    rows = [{"question": "q", "answer": "a = <<2*500=1000>>1,000\n#### 1,000"}]
    _write(tmp_path / "gsm8k" / "train.jsonl", [json.dumps(row) for row in rows])
    task = GSM8K(GSM8KConfig(data_dir=str(tmp_path)))
    assert task.examples("train") == [{**rows[0], "target": "1000"}]
    assert task.reference(task.examples("train")[0]) == "a = 1,000\n#### 1,000"


@pytest.mark.parametrize(
    ("lines", "where"),
    [
        (['{"question": "q", "answer": "#### 1"}', "{not json"], ":2: not valid JSON"),
        (['{"question": "q", "answer": "no final number"}'], ":1: expected an object"),
        (['{"question": 3, "answer": "#### 1"}'], ":1: expected an object"),
        (["[1, 2]"], ":1: expected an object"),
    ],
)
def test_gsm8k_malformed_line_names_file_and_line(tmp_path: Path, lines: list[str], where: str) -> None:
    path = tmp_path / "gsm8k" / "test.jsonl"
    _write(path, lines)
    with pytest.raises(GfoError, match=rf"{path}{where}"):
        GSM8K(GSM8KConfig(data_dir=str(tmp_path))).examples("test")


def test_gsm8k_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GfoError, match=r"gsm8k/train\.jsonl.*problem\.data_dir or GFO_DATA_DIR"):
        GSM8K(GSM8KConfig(data_dir=str(tmp_path))).examples("train")


def test_gsm8k_unknown_split() -> None:
    with pytest.raises(GfoError, match="no split 'dev'; use one of train, test"):
        GSM8K(GSM8K.Config()).examples("dev")


def test_gsm8k_hub_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def load_dataset(*args: Any, **kwargs: Any) -> list[dict[str, str]]:
        calls.append((*args, kwargs["split"]))
        return [{"question": "q", "answer": "x\n#### 4"}]

    monkeypatch.delenv("GFO_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert GSM8K(GSM8K.Config()).examples("test")[0]["target"] == "4"
    assert calls == [("openai/gsm8k", "main", "test")]


def test_gsm8k_hub_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("offline\ntraceback-like detail")

    monkeypatch.delenv("GFO_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(GfoError) as info:
        GSM8K(GSM8K.Config()).examples("train")
    message = str(info.value)
    assert "\n" not in message and "GFO_DATA_DIR" in message and "problem.data_dir" in message


# --- arithmetic -------------------------------------------------------------------------------

ARITHMETIC_TABLE = [
    ("12 + 7 - 3 = 16\n#### 16", 1.0),
    ("16", 1.0),
    ("16.", 1.0),
    ("The answer is 16.", 1.0),
    ("12 + 7 = 19, and 19 - 3 = 16", 1.0),
    ("The answer is 15. Actually 16.", 0.0),
    ("#### 16\n#### 17", 1.0),
    ("#### 16.0", 1.0),
    ("12 + 7 - 3", 0.0),  # last number is 3
    ("-16", 0.0),
    ("sixteen", 0.0),
]


@pytest.mark.parametrize(("completion", "expected"), ARITHMETIC_TABLE)
def test_arithmetic_reward_table(completion: str, expected: float) -> None:
    task = Arithmetic(Arithmetic.Config())
    assert task.reward([completion], [{"expression": "12 + 7 - 3", "target": 16}]) == [expected]


def test_arithmetic_negative_target_and_bonus() -> None:
    task = Arithmetic(ArithmeticConfig(format_bonus=0.2))
    example = {"expression": "3 - 10", "target": -7}
    assert task.reward(["#### -7", "3 - 10 = -7", "#### 7"], [example] * 3) == [1.2, 1.0, 0.2]


STEPS_TABLE = [
    ("12 + 7 = 19\n19 - 3 = 16\n#### 16", 1.0),
    ("12 + 7 = 19\n19 - 3 = 15\n#### 15", 0.5),  # the first step right
    ("12 + 7 = 18\n18 - 3 = 15\n#### 15", 0.5),  # the second, judged from the result written
    ("12 + 7 = 18\n19 - 3 = 16", 0.0),  # the second step does not start from the first's result
    ("12 + 7 = 19, and 19 - 3 = 16", 1.0),
    ("12+7=19", 0.5),
    ("19 - 3 = 16\n12 + 7 = 19", 0.5),  # in order: the second step comes after the first
    ("12 + 7 - 3 = 16", 0.0),  # no step worked out ("7 - 3 = 16" is not the first step)
    ("112 + 7 = 119\n19 - 3 = 16", 0.0),  # not the expression's first term
    ("12 + 7 = 19\n" * 3, 0.5),  # repeating a step earns it once
    ("", 0.0),
]


@pytest.mark.parametrize(("text", "expected"), STEPS_TABLE)
def test_steps_right_table(text: str, expected: float) -> None:
    assert steps_right(text, "12 + 7 - 3") == expected


def test_steps_right_negative_results_and_other_expressions() -> None:
    assert steps_right("6 - 74 = -68\n-68 + 70 = 2\n#### 2", "6 - 74 + 70") == 1.0
    assert steps_right("6 - 74 = -18\n-18 + 70 = 52", "6 - 74 + 70") == 0.5
    assert steps_right("3 * 4 = 12", "3 * 4") == 0.0  # levels 2 and 3: no partial credit
    assert steps_right("12 + 7 = 19" + "x" * MAX_COMPLETION_CHARS, "12 + 7") == 0.0


def test_arithmetic_step_credit_stays_below_an_exact_answer() -> None:
    task = Arithmetic(ArithmeticConfig(step_credit=0.5))
    example = {"expression": "12 + 7 - 3", "target": 16}
    texts = ["12 + 7 = 19\n19 - 3 = 16\n#### 16", "12 + 7 = 19\n19 - 3 = 15\n#### 15", "#### 16", "#### 15"]
    assert task.reward(texts, [example] * 4) == [1.0, 0.25, 1.0, 0.0]
    assert Arithmetic(ArithmeticConfig()).reward(texts[1:2], [example]) == [0.0]  # off by default


def _signed_sum(expression: str) -> int:
    """Independent check for level 1 (+ and - only), without going through the task's parser."""
    tokens = expression.split()
    total = int(tokens[0])
    for op, term in zip(tokens[1::2], tokens[2::2], strict=True):
        total += int(term) if op == "+" else -int(term)
    return total


def test_arithmetic_level1_items() -> None:
    task = Arithmetic(ArithmeticConfig(train_size=300, test_size=100, data_seed=3))
    train, test = task.examples("train"), task.examples("test")
    assert (len(train), len(test)) == (300, 100)
    assert not {row["expression"] for row in train} & {row["expression"] for row in test}
    for row in [*train, *test]:
        tokens = row["expression"].split()
        assert len(tokens) in (3, 5) and set(tokens[1::2]) <= {"+", "-"}
        assert all(1 <= int(t) <= 99 for t in tokens[::2])
        assert row["target"] == _signed_sum(row["expression"])
    assert task.reward([task.reference(row) for row in train], train) == [1.0] * 300
    first = train[0]
    # A worked reference: one line per operation, left to right ("69 + 27 = 96", "96 + 57 = 153").
    assert (
        task.reference({"expression": "69 + 27 + 57", "target": 153})
        == "69 + 27 = 96\n96 + 57 = 153\n#### 153"
    )
    assert (
        task.reference({"expression": "17 - 10 - 70", "target": -63}) == "17 - 10 = 7\n7 - 70 = -63\n#### -63"
    )
    assert task.reference({"expression": "3 * (4 + 1)", "target": 15}) == "3 * (4 + 1) = 15\n#### 15"
    assert "#### <number>" in task.prompt(first) and first["expression"] in task.prompt(first)


def test_arithmetic_deterministic_and_seeded() -> None:
    def items(**keys: Any) -> tuple[list[Any], list[Any]]:
        task = Arithmetic(ArithmeticConfig(train_size=50, test_size=20, **keys))
        return list(task.examples("train")), list(task.examples("test"))

    assert items(data_seed=1) == items(data_seed=1)
    assert items(data_seed=1) != items(data_seed=2)
    # The held-out set does not move when the training set grows.
    bigger = Arithmetic(ArithmeticConfig(train_size=500, test_size=20, data_seed=1))
    assert items(data_seed=1)[1] == bigger.examples("test")


@pytest.mark.parametrize(("level", "max_operand", "marker"), [(2, 999, "*"), (3, 9999, "(")])
def test_arithmetic_harder_levels(level: int, max_operand: int, marker: str) -> None:
    task = Arithmetic(ArithmeticConfig(level=level, train_size=200, test_size=50))
    rows = task.examples("train")
    assert any(marker in row["expression"] for row in rows)
    operands = [int(t.strip("()")) for row in rows for t in row["expression"].split()[::2]]
    assert max(operands) <= max_operand and max(operands) > max_operand // 10
    assert task.reward([task.reference(row) for row in rows], rows) == [1.0] * 200


# --- countdown --------------------------------------------------------------------------------

COUNTDOWN_EXAMPLE = {"numbers": [2, 3, 7, 50], "target": 61}
COUNTDOWN_TABLE = [
    ("<answer>50 + 7 * 2 - 3</answer>", 1.0),
    ("Let me think.\n<answer> (50 + 7 * 2 - 3) </answer>", 1.0),
    ("<answer>50 + 7 * 2 - 3 = 61</answer>", 1.0),
    ("<answer>-3 + 50 + 2 * 7</answer>", 1.0),
    ("<answer>50 + 7 × 2 − 3</answer>", 1.0),
    ("<answer>50 + 7 * 2 - 3</answer><answer>1 + 1</answer>", 1.0),  # the first tag counts
    ("<answer>1 + 1</answer><answer>50 + 7 * 2 - 3</answer>", 0.0),
    ("Trying things.\n50 + 7 * 2 - 3 = 61", 1.0),  # untagged: last expression-like line
    ("So: 50 + 7 * 2 - 3 = 61.", 1.0),
    ("<answer>50 + 7 * 2 - 3", 1.0),  # unclosed tag: the line still ends in the expression
    ("<answer>50 + 7 * 2</answer>", 0.0),  # 3 unused
    ("<answer>50 + 7 + 7 - 3</answer>", 0.0),  # 61, but 7 twice and 2 unused
    ("<answer>50 + 14 - 3</answer>", 0.0),  # 14 is not given
    ("<answer>50 + 7 * 2 - 3 + 0</answer>", 0.0),
    ("<answer>61</answer>", 0.0),
    ("<answer>50 + 7 ** 2 - 3</answer>", 0.0),
    ("<answer>(50 + 7 * 2 - 3) * (2 / (3 - 3))</answer>", 0.0),
    ("<answer>__import__('os').system('echo hi')</answer>", 0.0),
    ("<answer>50 + 7 * 2 - 3.0</answer>", 0.0),
    ("The answer is 61.", 0.0),
    ("", 0.0),
]


@pytest.mark.parametrize(("completion", "expected"), COUNTDOWN_TABLE)
def test_countdown_reward_table(completion: str, expected: float) -> None:
    assert Countdown(Countdown.Config()).reward([completion], [COUNTDOWN_EXAMPLE]) == [expected]


def test_countdown_exact_fractions_and_bonus() -> None:
    task = Countdown(CountdownConfig(format_bonus=0.1))
    example = {"numbers": [1, 5, 5, 5], "target": 24}
    completions = ["<answer>5 * (5 - 1 / 5)</answer>", "<answer>5 + 5 + 5 + 1</answer>", "5 * (5 - 1 / 5)"]
    assert task.reward(completions, [example] * 3) == [1.1, 0.1, 1.0]


def test_extract_expression() -> None:
    assert extract_expression("<answer> 1 + 2 = 3. </answer>") == ("1 + 2", True)
    assert extract_expression("first 1 + 2\nthen 3 * 4\nthat's it") == ("3 * 4", False)
    assert extract_expression("just words") == (None, False)
    assert extract_expression("<answer></answer>") == (None, True)


def test_countdown_items() -> None:
    config = CountdownConfig(train_size=400, test_size=100, data_seed=5)
    task = Countdown(config)
    train, test = task.examples("train"), task.examples("test")
    assert (len(train), len(test)) == (400, 100)

    def key(row: Any) -> tuple[Any, ...]:
        return (*sorted(row["numbers"]), row["target"])

    assert not {key(row) for row in train} & {key(row) for row in test}
    for row in [*train, *test]:
        assert 3 <= len(row["numbers"]) <= 4 and all(1 <= n <= 100 for n in row["numbers"])
        assert 1 <= row["target"] <= 100
    assert {len(row["numbers"]) for row in train} == {3, 4}
    # Solvable by construction: every reference solution is accepted.
    assert task.reward([task.reference(row) for row in train], train) == [1.0] * 400
    assert Countdown(config).examples("test") == test
    assert Countdown(CountdownConfig(train_size=400, test_size=100, data_seed=6)).examples("test") != test
    prompt = task.prompt(train[0])
    assert str(train[0]["numbers"]) in prompt and str(train[0]["target"]) in prompt and "<answer>" in prompt


def test_countdown_impossible_generation_is_an_error() -> None:
    config = CountdownConfig(min_numbers=2, max_numbers=2, max_number=2, train_size=50, test_size=1)
    with pytest.raises(GfoError, match="could not generate 50 distinct countdown items"):
        Countdown(config).examples("train")


# --- configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GSM8KConfig(format_bonus=-0.1), r"problem\.format_bonus must be in \[0, 1\]; got -0\.1"),
        (lambda: ArithmeticConfig(level=4), r"problem\.level must be one of 1, 2, 3; got 4"),
        (lambda: ArithmeticConfig(train_size=0), r"problem\.train_size must be in \[1, 100000\]; got 0"),
        (lambda: ArithmeticConfig(format_bonus=2.0), r"problem\.format_bonus"),
        (lambda: ArithmeticConfig(step_credit=1.0), r"problem\.step_credit must be in \[0, 1\); got 1\.0"),
        (lambda: CountdownConfig(min_numbers=5, max_numbers=4), r"2 <= min <= max <= 6; got 5 and 4"),
        (lambda: CountdownConfig(max_number=1), r"problem\.max_number must be in \[2, 10000\]; got 1"),
        (lambda: CountdownConfig(test_size=10**6), r"problem\.test_size"),
        (lambda: GSM8KConfig(rank=0), r"problem\.rank must be >= 1"),  # the shared keys are still checked
    ],
)
def test_config_errors_name_field_value_and_fix(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize("task_class", [GSM8K, Arithmetic, Countdown, Instruct])
def test_task_needs_its_own_config(task_class: Any) -> None:
    assert issubclass(task_class.Config, LLMConfig) and task_class.Config is not LLMConfig
    with pytest.raises(ConfigError, match=rf"{task_class.name} needs a"):
        task_class(LLMConfig())


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_task_modules_import_light() -> None:
    """Listing tasks must not import torch, transformers or datasets (checked in a fresh interpreter)."""
    code = (
        "import sys, problems.gsm8k, problems.arithmetic, problems.countdown, problems.instruct\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module", ["problems.gsm8k", "problems.arithmetic", "problems.countdown", "problems.instruct"]
)
def test_registry_target_problem(module: str) -> None:
    """`problems.<task>:Problem` (the registry's target) is built lazily, once."""
    tasks = importlib.import_module(module)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = tasks.Nope
    assert tasks.Problem is tasks.Problem
