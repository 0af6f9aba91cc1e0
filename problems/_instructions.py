"""IFEval's verifiable instructions: one pure checker per instruction id, its wording and its parameters.

The ids, wordings and checks follow IFEval (Zhou et al. 2023, arXiv 2311.07911, `instructions.py` of
google-research/instruction_following_eval) so that results read alike. Checks are IFEval's *strict*
variant: the response as it is, each checker stripping surrounding whitespace only where IFEval's
does (its *loose* variant, which also retries without the first or last line or without `*`, is not
applied). Where a check differs from IFEval's, the docstring says so; the main difference is no
language detection (the bundled model writes English). Linear-time scans replace the regular
expressions that backtrack quadratically on long whitespace or bracket runs. docs/tasks.md lists
every deliberate difference, and tests/test_ifeval_conformance.py runs IFEval's own checkers beside
these, failing on any other.

Every checker takes text a caller has already bounded (`problems.instruct` caps the length) and
never raises on any string. JSON is parsed with `json.loads`, never evaluated.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

NUMBER_WORDS = "length_constraints:number_words"
LOWERCASE = "change_case:english_lowercase"
CAPITAL = "change_case:english_capital"
NO_COMMA = "punctuation:no_comma"
EXISTENCE = "keywords:existence"
FORBIDDEN = "keywords:forbidden_words"
END = "startend:end_checker"
QUOTATION = "startend:quotation"
BULLETS = "detectable_format:number_bullet_lists"
JSON = "detectable_format:json_format"
TITLE = "detectable_format:title"
POSTSCRIPT = "detectable_content:postscript"

# Parameter ranges. The word bounds bracket the bundled model's short paragraphs (most already stay
# under 30 words when asked) to move base compliance off the extremes; the measured rates are in
# docs/tasks.md.
LESS_THAN_WORDS = (15, 20, 25)
AT_LEAST_WORDS = (40, 50, 60)
BULLET_COUNTS = (2, 3, 4)
POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")
END_PHRASES = (  # from IFEval's generator
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "Any other questions?",
)
# Keywords to include: everyday words, none of them a topic's word (checked in tests).
KEYWORDS = (
    "morning", "friend", "simple", "history", "future", "color", "quiet", "journey", "memory",
    "window", "energy", "balance", "patience", "weekend", "neighbor", "habit", "surprise", "comfort",
    "budget", "planet", "laughter", "challenge", "tradition", "curious", "gentle", "bright", "careful",
    "village", "ocean", "mountain", "evening", "silver", "forest", "ancient", "modern", "festival",
    "courage", "wonder", "promise", "harmony",
)  # fmt: skip
_WORD = re.compile(r"\w+")
_PS = re.compile(r"p\.\s?s\.")
_PPS = re.compile(r"p\.\s?p\.\s?s")


# --- checkers: (text, **kwargs) -> bool -----------------------------------------------------


def words(text: str) -> list[str]:
    """Words as IFEval counts them (nltk's `RegexpTokenizer(r"\\w+")`): "don't" is two words."""
    return _WORD.findall(text)


def count_words(text: str) -> int:
    """How many `words`."""
    return sum(1 for _ in _WORD.finditer(text))


def number_words(text: str, relation: str, num_words: int) -> bool:
    """`relation` "less than": fewer than `num_words` words; "at least": `num_words` or more."""
    count = count_words(text)
    return count < num_words if relation == "less than" else count >= num_words


def english_lowercase(text: str) -> bool:
    """No capital letters, and at least one letter (IFEval: `text == text.lower()`, plus langdetect)."""
    return text.islower()


def english_capital(text: str) -> bool:
    """No lowercase letters, and at least one letter (IFEval: `text.isupper()`, plus langdetect)."""
    return text.isupper()


def no_comma(text: str) -> bool:
    """No ASCII comma anywhere (IFEval's `re.search(r"\\,", text)`)."""
    return "," not in text


def existence(text: str, keywords: list[str]) -> bool:
    """Every keyword occurs, case-insensitive, as a substring ("friends" has "friend"), as in IFEval.

    IFEval's `re.search(keyword, text, re.IGNORECASE)`, the keyword escaped: `re`'s case folding,
    not `str.lower()`'s, so "FRİEND" (a dotted capital I) has "friend" as in IFEval.
    """
    return all(re.search(re.escape(keyword), text, flags=re.IGNORECASE) for keyword in keywords)


def forbidden_words(text: str, forbidden_words: list[str]) -> bool:
    """No forbidden word occurs as a whole word, case-insensitive (IFEval's `\\bword\\b`)."""
    return not any(
        re.search(r"\b" + re.escape(word) + r"\b", text, flags=re.IGNORECASE) for word in forbidden_words
    )


def end_checker(text: str, end_phrase: str) -> bool:
    """The text ends with the phrase, case-insensitive, once stripped of whitespace and then of the
    straight double quotes around it (IFEval's check: `"... Any other questions?"` passes, since
    the prompt quotes the phrase and a model may copy the quotes)."""
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(text: str) -> bool:
    """The stripped text starts and ends with a straight double quote (IFEval's check)."""
    stripped = text.strip()
    return len(stripped) > 1 and stripped[0] == '"' and stripped[-1] == '"'


def number_bullet_lists(text: str, num_bullets: int) -> bool:
    """Exactly `num_bullets` markdown bullets: lines whose first non-space character is `-`, or `*`
    followed by something other than `*` (so `**bold**` is no bullet). IFEval's two regexes
    (`^\\s*\\*[^\\*].*$`, `^\\s*-.*$`), as a line scan; unlike them a lone `*` line is no bullet.
    `1.` numbered lists and `•` do not count, as in IFEval.
    """
    bullets = 0
    for line in text.split("\n"):
        item = line.lstrip()
        if item.startswith("-") or (len(item) > 1 and item[0] == "*" and item[1] != "*"):
            bullets += 1
    return bullets == num_bullets


def json_format(text: str) -> bool:
    """The whole answer, without a ```json fence, is a JSON object or array.

    IFEval strips the same fences and accepts any JSON value; a bare number or quoted string is not
    accepted here, since a quoted paragraph would then count as "JSON format".
    """
    body = text.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        body = body.removeprefix(fence)
    body = body.removesuffix("```").strip()
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return False
    return isinstance(value, dict | list)


def title(text: str) -> bool:
    """A line holds `<<...>>` with some text inside, as IFEval's `<<[^\\n]+>>` (greedy, per line)."""
    for line in text.split("\n"):
        start, end = line.find("<<"), line.rfind(">>")
        if start >= 0 and end >= start + 3 and line[start : end + 2].lstrip("<").rstrip(">").strip():
            return True
    return False


def postscript(text: str, postscript_marker: str) -> bool:
    """The marker occurs anywhere, case-insensitive, with IFEval's optional spaces ("P. S.").

    As in IFEval, the position is not checked, although the instruction says "at the end".
    """
    lowered = text.lower()
    if postscript_marker == "P.P.S":
        return _PPS.search(lowered) is not None
    if postscript_marker == "P.S.":
        return _PS.search(lowered) is not None
    return postscript_marker.lower() in lowered


# --- the instructions ------------------------------------------------------------------------

Sampler = Callable[[random.Random, str], dict[str, Any]]


@dataclass(frozen=True)
class Instruction:
    """A checker, the sentence that asks for it (a `str.format` template over the checker's keyword
    arguments; a list reads as `"a" and "b"`), and a sampler of those arguments.

    `sample(rng, topic_word)` returns JSON-ready arguments (lists, not tuples), so an example read
    back from `completions.jsonl` equals the generated one.
    """

    check: Callable[..., bool]
    template: str
    sample: Sampler = lambda rng, word: {}


def _words(rng: random.Random, word: str) -> dict[str, Any]:
    relation = rng.choice(("less than", "at least"))
    bound = rng.choice(LESS_THAN_WORDS if relation == "less than" else AT_LEAST_WORDS)
    return {"relation": relation, "num_words": bound}


def _keywords(rng: random.Random, word: str) -> dict[str, Any]:
    return {"keywords": rng.sample([k for k in KEYWORDS if k != word], rng.randint(1, 2))}


# Wordings are IFEval's, except three: the keyword ones (IFEval prints a Python list), the bullet one
# (IFEval's spreads an example list over several lines) and the postscript one, whose marker is
# quoted here so that "P.P.S" does not run into the next sentence.
INSTRUCTIONS: dict[str, Instruction] = {
    NUMBER_WORDS: Instruction(number_words, "Answer with {relation} {num_words} words.", _words),
    LOWERCASE: Instruction(
        english_lowercase,
        "Your entire response should be in English, and in all lowercase letters. "
        "No capital letters are allowed.",
    ),
    CAPITAL: Instruction(
        english_capital, "Your entire response should be in English, and in all capital letters."
    ),
    NO_COMMA: Instruction(no_comma, "In your entire response, refrain from the use of any commas."),
    EXISTENCE: Instruction(existence, "Include {keywords} in your response.", _keywords),
    FORBIDDEN: Instruction(
        forbidden_words,
        "Do not use {forbidden_words} anywhere in your response.",
        lambda rng, word: {"forbidden_words": [word]},  # the topic's own word: the hardest to avoid
    ),
    END: Instruction(
        end_checker,
        'Finish your response with this exact phrase "{end_phrase}". '
        "No other words should follow this phrase.",
        lambda rng, word: {"end_phrase": rng.choice(END_PHRASES)},
    ),
    QUOTATION: Instruction(quotation, "Wrap your entire response with double quotation marks."),
    BULLETS: Instruction(
        number_bullet_lists,
        "Your answer must contain exactly {num_bullets} bullet points, "
        'each on its own line starting with "* ".',
        lambda rng, word: {"num_bullets": rng.choice(BULLET_COUNTS)},
    ),
    JSON: Instruction(
        json_format, "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```."
    ),
    TITLE: Instruction(
        title,
        "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
    ),
    POSTSCRIPT: Instruction(
        postscript,
        "At the end of your response, please explicitly add a postscript "
        'starting with "{postscript_marker}".',
        lambda rng, word: {"postscript_marker": rng.choice(POSTSCRIPT_MARKERS)},
    ),
}


def _conflicts() -> frozenset[frozenset[str]]:
    """Pairs never asked together: they contradict, or fight over the same place in the answer.

    JSON excludes everything but the keyword instructions (IFEval's INSTRUCTION_CONFLICTS); the
    closing quote of `quotation` must be the last character, so it excludes whatever must come last
    or shape lines; an end phrase and a postscript both claim the end.
    """
    pairs = {
        (LOWERCASE, CAPITAL),
        (QUOTATION, TITLE),
        (QUOTATION, BULLETS),
        (QUOTATION, END),
        (QUOTATION, POSTSCRIPT),
        (END, POSTSCRIPT),
    }
    pairs |= {(JSON, other) for other in INSTRUCTIONS if other not in (JSON, EXISTENCE, FORBIDDEN)}
    return frozenset(frozenset(pair) for pair in pairs)


CONFLICTS = _conflicts()


def compatible(a: str, b: str) -> bool:
    """Whether two different instructions may share a prompt."""
    return a != b and frozenset((a, b)) not in CONFLICTS


def describe(instruction_id: str, kwargs: Mapping[str, Any]) -> str:
    """The sentence of the prompt that asks for an instruction with these parameters."""
    shown = {k: " and ".join(f'"{w}"' for w in v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return INSTRUCTIONS[instruction_id].template.format(**shown)


def check(instruction_id: str, text: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether `text` follows the instruction with these parameters."""
    return bool(INSTRUCTIONS[instruction_id].check(text, **kwargs))
