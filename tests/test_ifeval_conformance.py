"""gfo's instruction checkers against IFEval's own, instruction by instruction.

The reference is Google's `instruction_following_eval` checkers (the code lm-evaluation-harness's
`ifeval` task also runs), as the `if-verifiable` package ships them (a dev dependency, imported
here only). Every checker of `problems._instructions` is run beside IFEval's `check_following` on
generated edge-case texts (quotes, whitespace, case, punctuation, markup, empty) and on plausible
answers (hand-written ones and the task's witness answers, perturbed), and any disagreement fails
unless `DIFFERENCES`, the deliberate differences that docs/tasks.md lists, explains it.

`python tests/test_ifeval_conformance.py` times both sets of checkers instead (docs/tasks.md).
"""

from __future__ import annotations

import importlib
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from problems import _instructions as ins
from problems._answers import MAX_COMPLETION_CHARS
from problems.instruct import Instruct, InstructConfig, follows, witness

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tasks.md"


def _registry() -> Any:
    # a dev dependency (pyproject's dev extra): missing, the test fails rather than skips
    registry = importlib.import_module("if_verifiable.ifeval.instructions_registry")
    # langdetect samples: unseeded, a short text's language can change from one call to the next
    registry.instructions.langdetect.DetectorFactory.seed = 0
    return registry


# --- the deliberate differences -----------------------------------------------------------------


def _ifeval_json_body(text: str) -> str:
    """The text IFEval's JSON check hands to `json.loads` (its fence stripping)."""
    body = text.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        body = body.removeprefix(fence)
    return body.removesuffix("```").strip()


def _json_scalar(text: str) -> bool:
    try:
        return not isinstance(json.loads(_ifeval_json_body(text)), dict | list)
    except (ValueError, RecursionError):
        return False


@dataclass(frozen=True)
class Difference:
    """A disagreement gfo keeps on purpose: the ids it concerns, why, and the test that a given
    disagreement is this one: `explains(text, ours, theirs)`, where `theirs` is IFEval's answer, or
    the exception its checker raised."""

    ids: tuple[str, ...]
    why: str
    explains: Callable[[str, bool, Any], bool]


# Keyed by the names docs/tasks.md's table gives them (checked below).
DIFFERENCES: dict[str, Difference] = {
    "language": Difference(
        (ins.LOWERCASE, ins.CAPITAL),
        "no language detection: IFEval also asks langdetect whether the text is English",
        lambda text, ours, theirs: ours and theirs is False,  # our test is IFEval's, less langdetect
    ),
    "json-value": Difference(
        (ins.JSON,),
        "an object or array only: IFEval accepts any JSON value, so a quoted paragraph is JSON",
        lambda text, ours, theirs: not ours and theirs is True and _json_scalar(text),
    ),
    "json-depth": Difference(
        (ins.JSON,),
        "nesting deeper than the parser's stack is no JSON: IFEval's check raises RecursionError",
        lambda text, ours, theirs: not ours and isinstance(theirs, RecursionError),
    ),
    "word-chars": Difference(
        (ins.NUMBER_WORDS,),
        "words are Python's `\\w+`, as IFEval's tokenizer counted them before nltk 3.10.3 moved it "
        "onto the `regex` engine, whose `\\w` leaves out digits such as ² ½ ①",
        lambda text, ours, theirs: len(regex.findall(r"\w+", text)) != ins.count_words(text),
    ),
    "lone-star": Difference(
        (ins.BULLETS,),
        "a line that is only `*` is no bullet: IFEval's `\\*[^\\*]` matches the `*` with the newline "
        "after it, so it counts",
        lambda text, ours, theirs: any(line.lstrip() == "*" for line in text.split("\n")[:-1]),
    ),
}
# Differences of `follows` (a whole example), not of one checker: IFEval's strict check credits any
# response that is not blank; gfo's follows nothing for one with no word character, or over the cap.
ANSWER_DIFFERENCES: dict[str, Callable[[str], bool]] = {
    "no-words": lambda text: ins.count_words(text) == 0,
    "length-cap": lambda text: len(text) > MAX_COMPLETION_CHARS,
}


def test_every_difference_is_documented() -> None:
    """docs/tasks.md's instruct table names each deliberate difference, in backticks."""
    text = DOCS.read_text(encoding="utf-8")
    for name in [*DIFFERENCES, *ANSWER_DIFFERENCES]:
        assert f"| `{name}` |" in text, f"docs/tasks.md does not list the IFEval difference `{name}`"


# --- texts --------------------------------------------------------------------------------------

# (id, kwargs): every instruction with the parameter values its sampler draws (keywords: a few of
# them), plus bounds and counts nearer short texts' edges.
GRID: list[tuple[str, dict[str, Any]]] = [
    *((ins.NUMBER_WORDS, {"relation": "less than", "num_words": n}) for n in (1, 5, *ins.LESS_THAN_WORDS)),
    *((ins.NUMBER_WORDS, {"relation": "at least", "num_words": n}) for n in (1, 5, *ins.AT_LEAST_WORDS)),
    (ins.LOWERCASE, {}),
    (ins.CAPITAL, {}),
    (ins.NO_COMMA, {}),
    (ins.EXISTENCE, {"keywords": ["friend"]}),
    (ins.EXISTENCE, {"keywords": ["morning", "ocean"]}),
    (ins.FORBIDDEN, {"forbidden_words": ["coffee"]}),
    (ins.FORBIDDEN, {"forbidden_words": ["tea"]}),
    *((ins.END, {"end_phrase": phrase}) for phrase in ins.END_PHRASES),
    (ins.QUOTATION, {}),
    *((ins.BULLETS, {"num_bullets": n}) for n in (1, *ins.BULLET_COUNTS)),
    (ins.JSON, {}),
    (ins.TITLE, {}),
    *((ins.POSTSCRIPT, {"postscript_marker": marker}) for marker in ins.POSTSCRIPT_MARKERS),
]

# Pieces that sit on the checkers' edges, joined at random into texts.
UNITS = [
    "coffee", "Coffee", "COFFEE", "coffees", "decoffee", "tea", "friend", "FRIENDS", "morning",
    "Ocean", "oceanic", "don't", "word", "the cat sat", "le chat est sur la table", "der hund ist groß",
    " ", "  ", "\n", "\n\n", "\t", "\r\n", "\r", "\u00a0", "\u2028", "\x0c",
    ",", "，", ".", "!", "?", ";", ":", '"', '""', "“", "”", "'", "\\",
    "* ", "*", "**", "- ", "-", "• ", "1. ", "*bold*", "**Note:**",
    "<<", ">>", "<", ">", "<<Title>>", "<< >>", "<<<x>>>",
    "P.S.", "p.s.", "P. S.", "P.P.S", "p. p. s", "PS", "P.S", "p.s",
    *ins.END_PHRASES, "any other questions?", "ANY OTHER QUESTIONS", "Any other questions? ",
    '{"a": 1}', "[1, 2]", "```json", "```", "{", "}", "[", "]", '"x"', "42", "null", "NaN", "true",
    "İ", "ſ", "ß", "É", "é", "\u212a", "١٢", "ﬁ", "ǅ", "ⅷ", "Σ",
]  # fmt: skip

# Plausible answers of a small instruct model to the task's prompts: the shapes its answers take.
COMPLETIONS = [
    "Morning coffee is my favorite part of the day. I sit by the window with a warm cup and watch the "
    "street wake up.\n\nP.S. Try it with a little cinnamon!",
    '"Tea is a quiet pleasure. A warm cup in the afternoon makes the day feel slower. Any other questions?"',
    "Tea is a quiet pleasure.\n\nIs there anything else I can help with?\n",
    "<<A Walk in the Woods>>\n\nThe walk in the woods was a beautiful and peaceful day.",
    "Here are some reasons to ride a bicycle:\n* It is good exercise.\n* It saves money.\n* It is fun!",
    "Here are some tips:\n\n- Water the plants daily\n- Use good soil\n- Plant in spring\n\n"
    "**Note:** be patient.",
    '```json\n{\n  "paragraph": "A rainy day is perfect for reading a book."\n}\n```',
    '{"title": "Chess", "text": "Chess is a game of patience and planning."}',
    "sure! here is a short paragraph about cooking pasta in all lowercase letters: boil the water and "
    "add salt.",
    "I'M SO EXCITED ABOUT THE BEACH TRIP! THE SUN, THE SAND AND THE WAVES.",
    "I'm sorry, but I can't help with that.",
    "P.S. I love my cat.\n\nP.P.S She loves me too.",
    "Walking the dog every morning keeps us both healthy and happy and I would not change it.",
    "Answer: 42",
    "",
    "   \n",
    "...",
    "* \n*\n* one",
    '"',
]  # fmt: skip

# Edges no random join is likely to hit.
EDGES = [
    "[" * 2_000 + "]" * 2_000,  # nested deeper than the JSON parser's stack
    "FRİEND and the mornİng ocean",  # a dotted capital I, which `re`'s case folding reads as "i"
    "ſome coffee with a friend",  # a long s
    "² ½ ① 2 twenty",  # digits that are `\w` to Python's `re` only
    "*\n- a\n- b",  # a lone `*` line, bullets after it
    "  *\n* a\n* b\n",
    '""',
    '"Any other questions?',
    'Any other questions?"',
    '" Any other questions? "',
    "{}",
    "```json\n[]\n```",
    '```JSON\n"text"```',
    "<<a>> and <<b>>",
    "p.p.s. late",
    "P.\nS. split",
    "\t\n \r\n",
]

PERTURBATIONS: list[Callable[[str], str]] = [
    lambda t: t,
    lambda t: f'"{t}"',
    lambda t: t + "  \n",
    lambda t: t.lower(),
    lambda t: t.upper(),
    lambda t: t.replace(".", ",", 1),
    lambda t: t.replace("* ", "- "),
    lambda t: "\n".join(t.split("\n")[:-1]),  # cut off: the last line lost
    lambda t: t.rstrip("?.!"),
    lambda t: f"```json\n{t}\n```",
]


def generated(n: int, seed: int = 0) -> Iterator[str]:
    """`n` texts joined from `UNITS`, some of them cased or quoted as a whole, seeded."""
    rng = random.Random(seed)
    for _ in range(n):
        text = "".join(rng.choice(UNITS) for _ in range(rng.randint(0, 30)))
        if rng.random() < 0.3:
            text = rng.choice(PERTURBATIONS)(text)
        yield text


def answers() -> list[str]:
    """Plausible answers: `COMPLETIONS` and witness answers of every instruction, each perturbed."""
    return [perturb(text) for text in COMPLETIONS for perturb in PERTURBATIONS] + [
        text for text, _ in _answer_pairs(120)
    ]


def _answer_pairs(size: int) -> list[tuple[str, dict[str, Any]]]:
    """Witness answers of `size` examples of every instruction, each perturbed, on their examples."""
    task = Instruct(InstructConfig(constraints=tuple(ins.INSTRUCTIONS), train_size=size, test_size=1))
    return [(perturb(witness(e)), e) for e in task.examples("train") for perturb in PERTURBATIONS]


# --- the comparison -----------------------------------------------------------------------------


def _reference(registry: Any, name: str, kwargs: dict[str, Any]) -> Any:
    """IFEval's checker for `name`, built as its strict evaluation builds it (None kwargs dropped)."""
    checker = registry.INSTRUCTION_DICT[name](name)
    checker.build_description(**{k: v for k, v in kwargs.items() if v})
    return checker


def _theirs(checker: Any, text: str) -> Any:
    try:
        return bool(checker.check_following(text))
    except Exception as exc:  # a reference crash is data: a difference may name it
        return exc


def disagreements(registry: Any, texts: list[str]) -> tuple[list[str], dict[str, int]]:
    """Unexplained disagreements over `GRID` x `texts`, and how often each difference explained one."""
    unexplained: list[str] = []
    used = dict.fromkeys(DIFFERENCES, 0)
    for name, kwargs in GRID:
        checker = _reference(registry, name, kwargs)
        for text in texts:
            ours, theirs = ins.check(name, text, kwargs), _theirs(checker, text)
            if ours is theirs:
                continue
            why = [k for k, d in DIFFERENCES.items() if name in d.ids and d.explains(text, ours, theirs)]
            if why:
                used[why[0]] += 1
            else:
                unexplained.append(f"{name} {kwargs} on {text[:300]!r}: gfo {ours}, IFEval {theirs!r}")
    return unexplained, used


def _fail_on(unexplained: list[str]) -> None:
    shown = "\n".join(unexplained[:20])
    assert not unexplained, f"{len(unexplained)} disagreements with IFEval that no difference names:\n{shown}"


def test_checkers_agree_with_ifeval_on_generated_and_plausible_texts() -> None:
    registry = _registry()
    texts = [*generated(1500), *answers(), *EDGES]
    unexplained, used = disagreements(registry, texts)
    _fail_on(unexplained)
    # Each difference is real (shown by some text): one that nothing shows is stale. Before nltk
    # 3.10.3, IFEval's words are Python's too.
    if registry.instructions.instructions_util.count_words("²") == 1:
        used.pop("word-chars")
    stale = {name: DIFFERENCES[name].why for name, n in used.items() if not n}
    assert not stale, f"no text shows these differences: {stale}"


def test_answers_agree_with_ifevals_strict_score() -> None:
    """Whole examples: `follows` against IFEval's strict evaluation (a blank response follows
    nothing; otherwise each checker decides), on perturbed witness answers and plausible ones."""
    registry = _registry()
    pairs = _answer_pairs(150)
    rng = random.Random(1)
    pairs += [(text, rng.choice(pairs)[1]) for text in COMPLETIONS * 4]
    pairs += [("x" * MAX_COMPLETION_CHARS + " ok", pairs[0][1])]
    unexplained, used = [], dict.fromkeys(ANSWER_DIFFERENCES, 0)
    for text, example in pairs:
        ids, kwargs = example["instruction_id_list"], example["kwargs"]
        theirs = [
            bool(text.strip()) and _theirs(_reference(registry, n, kw), text) is True
            for n, kw in zip(ids, kwargs, strict=True)
        ]
        ours = follows(text, example)[: len(ids)]  # the instructions; guards are gfo's own checks
        whole = [k for k, explains in ANSWER_DIFFERENCES.items() if explains(text) and not any(ours)]
        if whole:
            used[whole[0]] += 1
            continue
        for name, o, t in zip(ids, ours, theirs, strict=True):
            if o != t and not any(name in d.ids and d.explains(text, o, t) for d in DIFFERENCES.values()):
                unexplained.append(f"{name} {kwargs} on {text[:300]!r}: gfo {o}, IFEval {t}")
    _fail_on(unexplained)
    assert all(used.values()), used


FUZZ = settings(
    max_examples=300,
    derandomize=True,  # the same texts on every run: a CI failure reproduces
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


@FUZZ
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(UNITS), max_size=40).map("".join)))
def test_checkers_agree_with_ifeval_fuzzed(text: str) -> None:
    _fail_on(disagreements(_registry(), [text])[0])


# --- speed: `python tests/test_ifeval_conformance.py` ------------------------------------------------


def _time(run: Callable[[], object]) -> float:
    start = time.process_time()
    run()
    return time.process_time() - start


def main() -> None:
    """CPU seconds of gfo's checkers and IFEval's on the same texts: 1,000 plausible answers scored on
    their examples' instructions (what the reward does), and single worst-case long inputs."""
    registry = _registry()
    pairs = _answer_pairs(100)[:1000]

    def ours() -> None:
        for text, example in pairs:
            follows(text, example)

    def theirs() -> None:
        for text, example in pairs:
            for name, kwargs in zip(example["instruction_id_list"], example["kwargs"], strict=True):
                _theirs(_reference(registry, name, kwargs), text)

    print(f"{len(pairs)} answers, their instructions: gfo {_time(ours):.3f} s, IFEval {_time(theirs):.3f} s")
    cases = {
        "newlines": (ins.BULLETS, {"num_bullets": 3}, "\n"),
        "spaces": (ins.POSTSCRIPT, {"postscript_marker": "P.S."}, " "),
        "<<": (ins.TITLE, {}, "<<"),
    }
    for size in (MAX_COMPLETION_CHARS, 100_000):
        for label, (name, kwargs, unit) in cases.items():
            text = unit * (size // len(unit))
            mine = _time(lambda n=name, k=kwargs, t=text: ins.check(n, t, k))
            ref = _time(lambda n=name, k=kwargs, t=text: _theirs(_reference(registry, n, k), t))
            print(f"{size:>7,} chars of {label!r:>10} ({name}): gfo {mine:.4f} s, IFEval {ref:.2f} s")


if __name__ == "__main__":
    main()
