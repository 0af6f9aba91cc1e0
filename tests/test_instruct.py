"""The instruct task: every IFEval checker on literal tables, the reward, generation, and fuzzing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfo.config import build
from gfo.errors import ConfigError, GfoError
from gfo_llm.config import LLMConfig
from problems import _instructions as ins
from problems._answers import MAX_COMPLETION_CHARS
from problems.instruct import (
    DEFAULT_CONSTRAINTS,
    MIN_WORDS,
    NO_REPETITION,
    ON_TOPIC,
    REQUESTS,
    TOPICS,
    Instruct,
    InstructConfig,
    checks,
    constraint_report,
    follows,
    main,
    prompt_text,
    repetition,
    witness,
)

ALL = tuple(ins.INSTRUCTIONS)

# --- checkers: (instruction id, kwargs, texts that follow it, texts that do not) ---------------

CHECKS: list[tuple[str, dict[str, Any], list[str], list[str]]] = [
    (
        ins.NUMBER_WORDS,
        {"relation": "less than", "num_words": 5},
        ["One two three four.", "  Hi   there  ", "don't stop"],  # "don't" is two words, as in IFEval
        ["one two three four five", "It's a nice day.", "a b c d e f g"],
    ),
    (
        ins.NUMBER_WORDS,
        {"relation": "at least", "num_words": 3},
        ["one two three", "don't go", "a, b, c, d"],
        ["one two", "...", "word"],
    ),
    (
        ins.LOWERCASE,
        {},
        ["all lowercase here.", "p.s. fine, 123", "ünïcödé lower"],
        ["Capital start", "all lower except I", "12345"],  # no letter at all is not "lowercase"
    ),
    (
        ins.CAPITAL,
        {},
        ["ALL CAPS HERE.", "P.S. YES 123", "ÜBER"],
        ["ALL CAPS but not this", "Mixed", "123 456"],
    ),
    (
        ins.NO_COMMA,
        {},
        ["No commas here.", "Semicolons; fine", "A fullwidth comma， is not ASCII"],
        ["One, two", ",", "a\n,b"],
    ),
    (
        ins.EXISTENCE,
        {"keywords": ["friend", "ocean"]},
        ["My friend loves the ocean.", "FRIENDS by the Ocean", "oceanic friendship"],  # substrings count
        ["My friend loves the sea.", "The ocean.", "fiend and ocan"],
    ),
    (
        ins.FORBIDDEN,
        {"forbidden_words": ["coffee"]},
        ["I love tea.", "Coffees are great", "decoffeeinated"],  # whole words only, as in IFEval
        ["I love coffee.", "COFFEE!", "morning-coffee time"],
    ),
    (
        ins.END,
        {"end_phrase": "Any other questions?"},
        ["Text. Any other questions?", "text any other questions?  \n", "ANY OTHER QUESTIONS?"],
        ["Any other questions? Yes.", "Any other questions", "Any other question?"],
    ),
    (
        ins.END,  # IFEval strips whitespace, then straight double quotes, at both ends
        {"end_phrase": "Any other questions?"},
        [
            '"Text. Any other questions?"',  # the prompt quotes the phrase; a model may copy the quotes
            'Text. "Any other questions?"',
            ' "Text. Any other questions?" \n',
            'Text. Any other questions?""',
        ],
        [
            '"Text. Any other questions? "',  # whitespace inside the quote stays
            '"Text. Any other questions?".',
            "Text. “Any other questions?”",  # curly quotes are not stripped
            "'Text. Any other questions?'",
        ],
    ),
    (
        ins.QUOTATION,
        {},
        ['"Hello there."', '  "Multi\nline"  \n', '"a"'],
        ['Hello "there"', '"unclosed', "“curly quotes”", '"'],
    ),
    (
        ins.BULLETS,
        {"num_bullets": 3},
        ["* a\n* b\n* c", "Intro:\n  * a\n- b\n*c", "* one\n\n* two\n\n* three\nEnd."],
        ["* a\n* b", "1. a\n2. b\n3. c", "**a**\n**b**\n**c**", "• a\n• b\n• c", "* a\n* b\n* c\n- d"],
    ),
    (
        ins.JSON,
        {},
        ['{"a": 1}', '```json\n{"paragraph": "hi"}\n```', " [1, 2, 3] ", '```\n{"k": [true, null]}\n```'],
        [
            '{"a": 1',
            'Here is JSON: {"a": 1}',
            '"just a string"',  # a JSON value, but not an object or array
            "42",
            "{'a': 1}",
            "[" * 50_000 + "]" * 50_000,  # deeper than the parser's stack
            "```json\n```",
        ],
    ),
    (
        ins.TITLE,
        {},
        ["<<My Title>>\nText", "Text then <<t>> inline", "<<<Nested>>>"],
        ["<<>>", "<< >>", "<<Title\n>>", "<Title>", "No title"],
    ),
    (
        ins.POSTSCRIPT,
        {"postscript_marker": "P.S."},
        ["Text.\nP.S. Bye.", "p. s. lower", "text P.S."],
        ["Text. PS bye", "P.P.S bye", "Post script", "P S."],
    ),
    (
        ins.POSTSCRIPT,
        {"postscript_marker": "P.P.S"},
        ["Text.\nP.P.S more", "p.p. s", "P. P. S: later"],
        ["P.S. only", "PPS", "P.S.S."],
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "passing", "failing"), CHECKS, ids=[c[0] for c in CHECKS])
def test_checker_table(name: str, kwargs: dict[str, Any], passing: list[str], failing: list[str]) -> None:
    assert len(passing) >= 3 and len(failing) >= 3
    for text in passing:
        assert ins.check(name, text, kwargs) is True, repr(text)
    for text in failing:
        assert ins.check(name, text, kwargs) is False, repr(text)


def test_every_instruction_has_a_table() -> None:
    assert {c[0] for c in CHECKS} == set(ALL)
    assert len(ALL) == 12 and all(":" in name for name in ALL)  # IFEval's "group:name" ids


# --- reward -----------------------------------------------------------------------------------

BULLETS_PS = {
    "topic": "morning coffee",
    "instruction_id_list": [ins.BULLETS, ins.POSTSCRIPT],
    "kwargs": [{"num_bullets": 2}, {"postscript_marker": "P.S."}],
}
LOWER_NO_COMMA = {
    "topic": "a rainy day",
    "instruction_id_list": [ins.LOWERCASE, ins.NO_COMMA],
    "kwargs": [{}, {}],
}
REWARDS: list[tuple[dict[str, Any], Any, float]] = [
    (BULLETS_PS, "Coffee is nice.\n* Warm\n* Bitter\nP.S. Enjoy it.", 1.0),
    (BULLETS_PS, "* Warm\n* Bitter", 0.5),
    (BULLETS_PS, "Coffee is nice. P.S. Enjoy it.", 0.5),
    (BULLETS_PS, "Coffee is a drink.", 0.0),
    (BULLETS_PS, "* Warm\n* Bitter\nP.S." + " more" * MAX_COMPLETION_CHARS, 0.0),  # over the cap: unread
    (LOWER_NO_COMMA, "rain falls and the day is grey.", 1.0),
    (LOWER_NO_COMMA, "Rain falls and the day is grey.", 0.5),
    (LOWER_NO_COMMA, "Rain falls, and the day is grey.", 0.0),
    (LOWER_NO_COMMA, "", 0.0),  # an empty answer follows nothing, not even "no commas"
    (LOWER_NO_COMMA, "  \n ...", 0.0),
    (LOWER_NO_COMMA, None, 0.0),  # not a string
]


@pytest.mark.parametrize(("example", "completion", "expected"), REWARDS)
def test_reward_table(example: dict[str, Any], completion: Any, expected: float) -> None:
    assert Instruct(InstructConfig()).reward([completion], [example]) == [expected]


def test_reward_is_strict_compliance_at_one() -> None:
    """`gfo eval` counts reward >= 1 as correct: exactly the completions that follow everything."""
    completions = [text for example, text, _ in REWARDS if isinstance(text, str)]
    examples = [example for example, text, _ in REWARDS if isinstance(text, str)]
    rewards = Instruct(InstructConfig()).reward(completions, examples)
    assert [r >= 1.0 for r in rewards] == [
        all(follows(t, e)) for t, e in zip(completions, examples, strict=True)
    ]
    single = {"topic": "x", "instruction_id_list": [ins.QUOTATION], "kwargs": [{}]}
    assert Instruct(InstructConfig()).reward(['"yes"', "no"], [single] * 2) == [1.0, 0.0]


def test_reward_length_mismatch_is_a_bug() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        Instruct(InstructConfig()).reward(["a", "b"], [BULLETS_PS])


def test_constraint_report() -> None:
    completions = ["Coffee.\n* a\n* b\nP.S. x", "* a\n* b", "nothing", "rain is grey."]
    examples = [BULLETS_PS, BULLETS_PS, BULLETS_PS, LOWER_NO_COMMA]
    assert constraint_report(completions, examples) == {
        ins.LOWERCASE: (1, 1),
        ins.BULLETS: (2, 3),
        ins.POSTSCRIPT: (1, 3),
        ins.NO_COMMA: (1, 1),
    }
    assert list(constraint_report(completions, examples)) == sorted(constraint_report(completions, examples))
    assert constraint_report([], []) == {}


def test_report_command_reads_gfo_eval_completions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "completions.jsonl"
    rows = [
        {"index": 0, "completion": "Coffee.\n* a\n* b\nP.S. x", "reward": 1.0, "example": BULLETS_PS},
        {"index": 1, "completion": "* a\n* b", "reward": 0.5, "example": BULLETS_PS},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{ins.BULLETS:<40}    2/2    100.0%" in out
    assert f"{ins.POSTSCRIPT:<40}    1/2     50.0%" in out
    assert "prompt level (strict)" in out and "1/2" in out.splitlines()[-1]
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert main([]) == 2


# --- generation -------------------------------------------------------------------------------


def _items(**keys: Any) -> tuple[list[Any], list[Any]]:
    task = Instruct(InstructConfig(**{"train_size": 300, "test_size": 100, **keys}))
    return list(task.examples("train")), list(task.examples("test"))


def test_generation_is_seeded_and_deterministic() -> None:
    assert _items(data_seed=1) == _items(data_seed=1)
    assert _items(data_seed=1) != _items(data_seed=2)
    # The held-out set does not move when the training set grows.
    assert _items(data_seed=1)[1] == _items(data_seed=1, train_size=1000)[1]


def test_train_and_test_are_disjoint_prompts() -> None:
    train, test = _items(train_size=2000, test_size=500)
    assert (len(train), len(test)) == (2000, 500)
    train_prompts, test_prompts = {prompt_text(r) for r in train}, {prompt_text(r) for r in test}
    assert len(train_prompts) == 2000 and len(test_prompts) == 500  # no repeats within a split
    assert not train_prompts & test_prompts


def test_prompt_wording() -> None:
    example = {
        "topic": "ice cream",
        "request": "Write a short paragraph about ice cream.",
        "instruction_id_list": [ins.NUMBER_WORDS, ins.EXISTENCE],
        "kwargs": [{"relation": "less than", "num_words": 20}, {"keywords": ["summer", "friend"]}],
    }
    assert prompt_text(example) == (
        'Write a short paragraph about ice cream. Answer with less than 20 words. Include "summer" and '
        '"friend" in your response.'
    )
    assert Instruct(InstructConfig()).prompt(example) == prompt_text(example)


@pytest.mark.parametrize("per_prompt", [1, 2])
def test_no_contradictory_pairs_and_every_prompt_satisfiable(per_prompt: int) -> None:
    """2,000 prompts with every instruction enabled: no conflict, and a witness answer scores 1."""
    task = Instruct(InstructConfig(constraints=ALL, constraints_per_prompt=per_prompt, train_size=2000))
    rows = task.examples("train")
    used: set[str] = set()
    for row in rows:
        ids = row["instruction_id_list"]
        assert len(ids) == per_prompt == len(row["kwargs"])
        assert all(ins.compatible(a, b) for a, b in combinations(ids, 2))
        used.update(ids)
        assert row["topic"] in task.prompt(row)
    assert used == set(ALL)
    assert task.reward([task.reference(row) for row in rows], rows) == [1.0] * len(rows)
    assert json.loads(json.dumps(list(rows))) == rows  # what `gfo eval` writes reads back equal


def test_default_subset_and_its_pairs() -> None:
    config = InstructConfig()
    assert config.constraints == DEFAULT_CONSTRAINTS and config.constraints_per_prompt == 2
    assert config.max_new_tokens == 96 and config.format_bonus == 0.0
    rows = Instruct(config).examples("test")
    pairs = {frozenset(r["instruction_id_list"]) for r in rows}
    assert all(set(p) <= set(DEFAULT_CONSTRAINTS) for p in pairs)
    assert ins.QUOTATION not in DEFAULT_CONSTRAINTS  # 0% on the bundled model: no signal
    assert len(pairs) == sum(ins.compatible(a, b) for a, b in combinations(DEFAULT_CONSTRAINTS, 2)) == 10


def test_conflicts_are_the_documented_ones() -> None:
    assert not ins.compatible(ins.LOWERCASE, ins.CAPITAL)
    assert not ins.compatible(ins.LOWERCASE, ins.LOWERCASE)
    for other in ALL:
        if other not in (ins.EXISTENCE, ins.FORBIDDEN):
            assert not ins.compatible(ins.JSON, other)
    for other in (ins.TITLE, ins.BULLETS, ins.END, ins.POSTSCRIPT):
        assert not ins.compatible(ins.QUOTATION, other)
    assert ins.compatible(ins.JSON, ins.EXISTENCE) and ins.compatible(ins.BULLETS, ins.POSTSCRIPT)


def test_word_lists() -> None:
    words = {w.lower() for _, w in TOPICS}
    assert len(TOPICS) >= 100 and len(words) == len(TOPICS)
    assert all(w.lower() in t.lower() for t, w in TOPICS)
    assert not words & set(ins.KEYWORDS)  # an included keyword is never the forbidden word


def test_witness_for_single_instructions() -> None:
    example = {"topic": "x", "instruction_id_list": [ins.JSON], "kwargs": [{}]}
    assert json.loads(witness(example)) == {"paragraph": "This is a pleasant subject."}


def test_on_topic_adds_a_check_not_a_prompt() -> None:
    """`problem.on_topic`: the same prompts, each also scored on naming its topic's word."""
    plain = Instruct(InstructConfig(train_size=300, test_size=100))
    topical = Instruct(InstructConfig(train_size=300, test_size=100, on_topic=True))
    words = dict(TOPICS)
    for split in ("train", "test"):
        rows = topical.examples(split)
        assert [{k: v for k, v in r.items() if k != "topic_word"} for r in rows] == list(
            plain.examples(split)
        )
        assert all(r["topic_word"] == words[r["topic"]] for r in rows)
    example = {"topic": "walking the dog", "topic_word": "dog", "request": "Tell me about walking the dog.",
               "instruction_id_list": [ins.NO_COMMA], "kwargs": [{}]}  # fmt: skip
    answers = ["Dogs love a long walk", "I am sorry but I cannot help with that", "A hotdog stand",
               "My dog, Rex", "dog"]  # fmt: skip
    assert topical.reward(answers, [example] * 5) == [1.0, 0.5, 0.5, 0.5, 1.0]
    assert (
        plain.reward(answers[:2], [{k: v for k, v in example.items() if k != "topic_word"}] * 2) == [1.0] * 2
    )
    assert follows("", example) == [False, False] and checks(example) == [ins.NO_COMMA, ON_TOPIC]
    assert constraint_report(answers, [example] * 5) == {ON_TOPIC: (3, 5), ins.NO_COMMA: (4, 5)}
    # Every prompt stays satisfiable: the witness names the word, under every instruction but the
    # one that forbids it.
    others = tuple(name for name in ALL if name != ins.FORBIDDEN)
    for per_prompt in (1, 2):
        config = InstructConfig(
            constraints=others, constraints_per_prompt=per_prompt, train_size=1000, on_topic=True
        )
        rows = Instruct(config).examples("train")
        assert Instruct(config).reward([witness(r) for r in rows], rows) == [1.0] * len(rows)
    with pytest.raises(
        ConfigError, match=r"problem\.on_topic asks for the topic's word, which keywords:forb"
    ):
        InstructConfig(on_topic=True, constraints=(ins.FORBIDDEN, ins.NO_COMMA))


def test_repetition_guard_fails_loops() -> None:
    """`problem.max_repetition`: one more check, on the share of repeated word 4-grams."""
    loop = "The beach is a place where you can go. " * 6
    assert repetition(loop) == pytest.approx(1 - 9 / 51)  # 54 words, 51 4-grams, 9 distinct
    assert repetition("a b c d a b c d") == pytest.approx(0.2)  # 5 4-grams, 4 distinct
    assert (repetition("one two three"), repetition("")) == (0.0, 0.0)
    assert repetition("A b C d a B c D") == pytest.approx(0.2)  # words, in any case
    plain = Instruct(InstructConfig(train_size=300, test_size=100))
    guarded = Instruct(InstructConfig(train_size=300, test_size=100, max_repetition=0.5))
    rows = guarded.examples("test")
    assert all(r.pop("max_repetition") == 0.5 for r in rows) and rows == list(plain.examples("test"))
    example = {"topic": "a trip to the beach", "request": "Tell me about a trip to the beach.",
               "instruction_id_list": [ins.NO_COMMA], "kwargs": [{}], "max_repetition": 0.5}  # fmt: skip
    answers = [loop, "The beach is warm and the sea is calm.", "Sand, sun and sea."]
    assert guarded.reward(answers, [example] * 3) == [0.5, 1.0, 0.5]
    assert checks(example) == [ins.NO_COMMA, NO_REPETITION]
    assert constraint_report(answers, [example] * 3) == {NO_REPETITION: (2, 3), ins.NO_COMMA: (2, 3)}
    both = {**example, "topic_word": "beach"}
    assert checks(both) == [ins.NO_COMMA, ON_TOPIC, NO_REPETITION]
    assert guarded.reward(["The sea is calm today."], [both]) == [pytest.approx(2 / 3)]
    # The witness stays a valid answer: its padding does not loop.
    for constraints, on_topic in ((ALL, False), (tuple(n for n in ALL if n != ins.FORBIDDEN), True)):
        config = InstructConfig(
            constraints=constraints, train_size=1000, max_repetition=0.5, on_topic=on_topic
        )
        rows = Instruct(config).examples("train")
        assert Instruct(config).reward([witness(r) for r in rows], rows) == [1.0] * len(rows)
    with pytest.raises(ConfigError, match=r"problem\.max_repetition must be in \[0, 1\]"):
        InstructConfig(max_repetition=1.5)


def test_min_words_guard_fails_one_liners() -> None:
    """`problem.min_words`: one more check, the answer's length, on prompts without a word count."""
    plain = Instruct(InstructConfig(train_size=300, test_size=100))
    guarded = Instruct(InstructConfig(train_size=300, test_size=100, min_words=25))
    rows = guarded.examples("test")
    counted = [r for r in rows if ins.NUMBER_WORDS in r["instruction_id_list"]]
    assert counted and all("min_words" not in r for r in counted)  # the prompt's own count governs
    assert all(r.pop("min_words") == 25 for r in rows if r not in counted)
    assert rows == list(plain.examples("test"))
    example = {"topic": "a trip to the beach", "request": "Write a few sentences about a trip to the beach.",
               "instruction_id_list": [ins.NO_COMMA], "kwargs": [{}], "min_words": 5}  # fmt: skip
    answers = ["The beach was warm today.", "The beach was warm.", "Sand, sun, sea and a long swim."]
    assert guarded.reward(answers, [example] * 3) == [1.0, 0.5, 0.5]  # 5 words, 4 words, a comma
    assert checks(example) == [ins.NO_COMMA, MIN_WORDS]
    assert constraint_report(answers, [example] * 3) == {MIN_WORDS: (2, 3), ins.NO_COMMA: (2, 3)}
    every = {**example, "topic_word": "beach", "max_repetition": 0.5}
    assert checks(every) == [ins.NO_COMMA, ON_TOPIC, NO_REPETITION, MIN_WORDS]
    # The witness stays a valid answer under all three guards, at the largest bound, one or two
    # instructions per prompt.
    others = tuple(name for name in ALL if name != ins.FORBIDDEN)
    for per_prompt in (1, 2):
        config = InstructConfig(constraints=others, constraints_per_prompt=per_prompt, train_size=1000,
                                on_topic=True, max_repetition=0.5, min_words=60)  # fmt: skip
        rows = Instruct(config).examples("train")
        assert any("min_words" in r for r in rows)
        assert Instruct(config).reward([witness(r) for r in rows], rows) == [1.0] * len(rows)
    for bad in (-1, 61):
        with pytest.raises(ConfigError, match=r"problem\.min_words must be in \[0, 60\]"):
            InstructConfig(min_words=bad)


def test_single_instruction_with_few_prompts_runs_out() -> None:
    """One parameterless instruction has one prompt per (request, topic): asking for more is an error."""
    distinct = len(REQUESTS) * len(TOPICS)
    assert distinct == 1616
    config = InstructConfig(
        constraints=(ins.NO_COMMA,), constraints_per_prompt=1, train_size=1000, test_size=500
    )
    task = Instruct(config)
    train, test = task.examples("train"), task.examples("test")
    prompts = {prompt_text(r) for r in [*train, *test]}
    assert len(prompts) == 1500  # a one-instruction study's streams fit, disjoint
    assert {r["request"].replace(r["topic"], "{topic}") for r in test} == set(REQUESTS)
    config = InstructConfig(
        constraints=(ins.NO_COMMA,), constraints_per_prompt=1, train_size=1117, test_size=500
    )
    with pytest.raises(GfoError, match="could not generate 1117 distinct instruct prompts"):
        Instruct(config).examples("train")


def test_unknown_split() -> None:
    with pytest.raises(GfoError, match="no split 'dev'; use one of train, test"):
        Instruct(InstructConfig()).examples("dev")


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"constraints_per_prompt": 3}, r"problem\.constraints_per_prompt must be 1 or 2; got 3"),
        ({"constraints": ()}, r"problem\.constraints is empty"),
        ({"constraints": ("punctuation:no_coma",)}, r"did you mean 'punctuation:no_comma'"),
        ({"constraints": (ins.TITLE, ins.TITLE)}, r"lists an instruction twice"),
        ({"constraints": (ins.JSON, ins.LOWERCASE)}, r"conflicts with every other enabled instruction"),
        ({"constraints": (ins.TITLE,)}, r"title conflicts with every other"),
        ({"format_bonus": 0.1}, r"problem\.format_bonus must be 0 for instruct"),
        ({"train_size": 0}, r"problem\.train_size must be in \[1, 100000\]"),
    ],
)
def test_config_errors(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        InstructConfig(**keys)


def test_config_accepts_single_instruction_with_one_per_prompt() -> None:
    assert InstructConfig(constraints=(ins.TITLE,), constraints_per_prompt=1).constraints == (ins.TITLE,)


def test_constraints_from_set_string() -> None:
    """`--set problem.constraints=a,b` becomes the tuple of ids."""
    config = build(InstructConfig, {"constraints": f"{ins.NO_COMMA}, {ins.TITLE}"}, "problem")
    assert config.constraints == (ins.NO_COMMA, ins.TITLE)


def test_task_needs_its_own_config() -> None:
    with pytest.raises(ConfigError, match=r"instruct needs an Instruct\.Config"):
        Instruct(LLMConfig())


# --- registry and CLI -------------------------------------------------------------------------


def test_module_imports_light_and_problem_is_lazy() -> None:
    code = (
        "import sys, problems.instruct\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    import problems.instruct as module
    from gfo.registry import PROBLEMS

    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = module.Nope
    assert PROBLEMS.get("instruct") is module.Problem is module.Problem
    assert module.Problem.Config is InstructConfig


def _gfo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gfo.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_gfo_list_shows_instruct() -> None:
    proc = _gfo("list")
    assert proc.returncode == 0, proc.stderr
    assert "instruct" in proc.stdout and "constraints_per_prompt" in proc.stdout


def test_gfo_eval_on_the_tiny_model_and_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The whole path on the tiny random model: gfo eval, then the per-instruction report of its output."""
    out = tmp_path / "eval"
    sets = [
        f"problem.constraints={ins.NO_COMMA},{ins.EXISTENCE}",
        f"problem.model={tiny_model_dir}",
        "problem.dtype=fp32",
        "problem.max_new_tokens=6",
        "problem.test_size=4",
        "problem.train_size=4",
    ]
    proc = _gfo("eval", "--problem", "instruct", "--limit", "4", "--out", str(out), "--quiet",
                *(arg for s in sets for arg in ("--set", s)))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "eval.json").read_text())
    assert summary["items"] == 4 and summary["max_new_tokens"] == 6
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    task = Instruct(InstructConfig(constraints=(ins.NO_COMMA, ins.EXISTENCE), test_size=4, train_size=4))
    assert [r["example"] for r in rows] == list(task.examples("test"))
    assert [r["reward"] for r in rows] == task.reward([r["completion"] for r in rows], task.examples("test"))
    report = subprocess.run(
        [sys.executable, "-m", "problems.instruct", str(out / "completions.jsonl")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f"{ins.NO_COMMA:<40}" in report.stdout and "/4" in report.stdout


def test_bad_constraint_is_one_line_exit_2() -> None:
    proc = _gfo("eval", "--problem", "instruct", "--set", "problem.constraints=punctuation:no_coma")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "did you mean 'punctuation:no_comma'" in proc.stderr


# --- fuzzing ----------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=int(os.environ.get("GFO_FUZZ_EXAMPLES", "200")),
    deadline=None,  # time is asserted per call in CPU seconds (process_time): a busy machine does not fail it
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
UNITS = ["<<", ">>", "<", ">", "* ", "*", "**", "- ", "\n", "\r\n", " ", "\t", '"', "“", ",", "P.S.",
         "p. s.", "P.P.S", "{", "}", "[", "]", '{"a": ', "```json", "```", "\\", "word ", "A", "a",
         "İ", "ß", "\x00", "\u2028", "١٢", "Any other questions?", "coffee"]  # fmt: skip
adversarial = st.one_of(
    st.builds(lambda u, n: u * n, st.sampled_from(UNITS), st.integers(0, MAX_COMPLETION_CHARS // 2)),
    st.builds(lambda u, n: u * n, st.sampled_from(UNITS), st.integers(0, 400_000)),  # up to ~1 MB
    st.lists(st.sampled_from(UNITS), max_size=300).map("".join),
    st.sampled_from(["[" * 15_000 + "]" * 4_000, "<<" * 9_000 + ">", " " * 19_000 + "p", "9" * 19_000]),
)
completions = st.one_of(st.text(max_size=2_000), adversarial, st.tuples(st.text(), adversarial).map("".join))
# Every instruction, each with parameters its sampler can give, one or two to an example.
EXAMPLES = Instruct(InstructConfig(constraints=ALL, constraints_per_prompt=2, train_size=200, test_size=1))
SINGLES = Instruct(InstructConfig(constraints=ALL, constraints_per_prompt=1, train_size=50, test_size=1))
FUZZ_EXAMPLES = [*EXAMPLES.examples("train"), *SINGLES.examples("train")]


@FUZZ
@given(text=completions, index=st.integers(0, len(FUZZ_EXAMPLES) - 1))
def test_reward_is_total_bounded_and_fast(text: str, index: int) -> None:
    example = FUZZ_EXAMPLES[index]
    start = time.process_time()
    (reward,) = EXAMPLES.reward([text], [example])
    report = constraint_report([text], [example])
    elapsed = time.process_time() - start
    assert isinstance(reward, float) and 0.0 <= reward <= 1.0
    assert sum(s for s, _ in report.values()) == round(reward * len(example["instruction_id_list"]))
    assert elapsed < 1.0, f"{elapsed:.2f} s on a {len(text)}-character completion"


@FUZZ
@given(text=completions)
def test_every_checker_is_total(text: str) -> None:
    text = text[:MAX_COMPLETION_CHARS]
    for name, kwargs, _, _ in CHECKS:
        start = time.process_time()
        assert isinstance(ins.check(name, text, kwargs), bool)
        assert time.process_time() - start < 0.5, name


@pytest.mark.parametrize("unit", UNITS)
def test_every_unit_repeated_to_the_cap(unit: str) -> None:
    """Deterministic worst cases: each unit repeated up to the cap, read in full by every checker."""
    text = (unit * (MAX_COMPLETION_CHARS // len(unit) + 1))[:MAX_COMPLETION_CHARS]
    start = time.process_time()
    rewards = EXAMPLES.reward([text] * len(FUZZ_EXAMPLES[:40]), FUZZ_EXAMPLES[:40])
    assert time.process_time() - start < 2.0
    assert all(0.0 <= r <= 1.0 for r in rewards)
