"""Verifiable instruction following: IFEval-style constraints on short paragraphs (ESSA's IFEval, in spirit).

Prompts are generated offline from a seed: a request about a topic ("Write a short paragraph about
TOPIC.", or one of `REQUESTS`' other wordings) followed by one or two IFEval instructions
(`problems._instructions`), never two that contradict each other. The reward is the fraction of a
prompt's instructions the completion follows, so a reward of 1 is IFEval's strict prompt-level
compliance, and `gfo eval` (which counts reward >= 1 as correct) reports it as `correct / items`.
Three optional guards, unstated in the prompt, count as more checks: `on_topic` (the answer names its
topic's word), `max_repetition` (the answer does not loop) and `min_words` (the answer is a few
sentences, as its request asks, not one line); docs/tasks.md.
`constraint_report` gives the per-instruction breakdown; `python -m problems.instruct
OUT/completions.jsonl` prints it for a `gfo eval` folder.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, ClassVar

from gfo.errors import ConfigError, GfoError
from gfo.registry import unknown_name
from gfo_llm.config import LLMConfig
from gfo_llm.task import Example, lazy_problem
from problems import _instructions as ins
from problems._answers import MAX_COMPLETION_CHARS
from problems._generated import GeneratedConfig, GeneratedTask

# Requests for a short piece of prose, each with the same room for every instruction: 16 wordings x 101
# topics give one parameterless instruction 1,616 distinct prompts, enough for a test stream of 500
# and a training stream beside it (one wording gave 100: too few for a one-instruction study).
REQUESTS = (
    "Write a short paragraph about {topic}.",
    "Describe {topic} in a few sentences.",
    "Write a short blog post about {topic}.",
    "Tell me about {topic}.",
    "Write a brief story about {topic}.",
    "Explain to a child what {topic} is like.",
    "Write a short note to a friend about {topic}.",
    "Share your thoughts on {topic}.",
    "Write a few sentences about {topic}.",
    "Write a short diary entry about {topic}.",
    "Give a short description of {topic}.",
    "Write a short essay about {topic}.",
    "What do you like about {topic}? Answer in a short paragraph.",
    "Write a short speech about {topic}.",
    "Describe a memory of {topic}.",
    "Write a short letter to a newspaper about {topic}.",
)
# Not near 0% or 100% on the bundled model, one per prompt (the rates: docs/tasks.md): word count,
# keyword, bullets, no comma, postscript. Quotation (near 0%) is no longer among them; it and the
# other near-0% or near-100% ids stay available.
DEFAULT_CONSTRAINTS = (ins.NUMBER_WORDS, ins.EXISTENCE, ins.BULLETS, ins.NO_COMMA, ins.POSTSCRIPT)
MIN_WORDS_MAX = max(ins.AT_LEAST_WORDS)  # `problem.min_words` at most: what the witness's filler reaches

# (topic, its word): the word is what `keywords:forbidden_words` forbids, the one hardest to avoid.
TOPICS = (
    ("morning coffee", "coffee"), ("a rainy day", "rainy"), ("your favorite book", "book"),
    ("walking the dog", "dog"), ("cooking pasta", "pasta"), ("riding a bicycle", "bicycle"),
    ("a trip to the beach", "beach"), ("learning to swim", "swim"), ("gardening", "gardening"),
    ("a birthday party", "birthday"), ("playing chess", "chess"), ("baking bread", "bread"),
    ("a visit to the zoo", "zoo"), ("drinking tea", "tea"), ("taking the bus", "bus"),
    ("a snowy winter", "snowy"), ("watching a movie", "movie"), ("doing laundry", "laundry"),
    ("a picnic in the park", "picnic"), ("reading the news", "news"), ("listening to music", "music"),
    ("a favorite sport", "sport"), ("keeping a diary", "diary"), ("cleaning the house", "cleaning"),
    ("shopping for groceries", "groceries"), ("a pet cat", "cat"), ("learning a language", "language"),
    ("a summer vacation", "vacation"), ("going camping", "camping"), ("a school lunch", "lunch"),
    ("writing a letter", "letter"), ("a city library", "library"), ("planting a tree", "tree"),
    ("a thunderstorm", "thunderstorm"), ("making breakfast", "breakfast"), ("a board game", "game"),
    ("painting a picture", "painting"), ("taking photographs", "photographs"), ("a train ride", "train"),
    ("visiting grandparents", "grandparents"), ("a farmers market", "market"), ("fixing a bike", "bike"),
    ("a long flight", "flight"), ("ice cream", "cream"), ("a football match", "football"),
    ("flying a kite", "kite"), ("a morning run", "run"), ("learning to cook", "cook"),
    ("a family dinner", "dinner"), ("the first day of school", "school"), ("a lost umbrella", "umbrella"),
    ("brushing your teeth", "teeth"), ("a cup of hot chocolate", "chocolate"),
    ("going to the dentist", "dentist"), ("a new pair of shoes", "shoes"),
    ("building a sandcastle", "sandcastle"), ("a fishing trip", "fishing"),
    ("recycling", "recycling"), ("a sunny afternoon", "sunny"), ("playing the guitar", "guitar"),
    ("a road trip", "road"), ("making a sandwich", "sandwich"), ("a visit to the museum", "museum"),
    ("a favorite holiday", "holiday"), ("riding a horse", "horse"), ("knitting a scarf", "scarf"),
    ("a busy airport", "airport"), ("washing the car", "car"), ("a bowl of soup", "soup"),
    ("watching the stars", "stars"), ("a favorite teacher", "teacher"), ("moving to a new home", "home"),
    ("a video call", "video"), ("growing tomatoes", "tomatoes"), ("a morning alarm", "alarm"),
    ("learning to drive", "drive"), ("a crowded subway", "subway"), ("making pancakes", "pancakes"),
    ("a walk in the woods", "woods"), ("a piano lesson", "piano"), ("saving money", "money"),
    ("a haircut", "haircut"), ("feeding birds", "birds"), ("a lazy Sunday", "Sunday"),
    ("a birthday cake", "cake"), ("folding clothes", "clothes"), ("a hot summer night", "night"),
    ("visiting a bakery", "bakery"), ("a favorite song", "song"), ("playing in the snow", "snow"),
    ("a science fair", "science"), ("ordering pizza", "pizza"), ("a rainbow", "rainbow"),
    ("taking a nap", "nap"), ("a swimming pool", "pool"), ("the smell of rain", "rain"),
    ("a lemonade stand", "lemonade"), ("sending a text message", "message"), ("a jigsaw puzzle", "puzzle"),
    ("a farm", "farm"), ("a coffee shop", "shop"),
)  # fmt: skip


@dataclass(frozen=True)
class InstructConfig(GeneratedConfig):
    """Instruction-following settings on top of the shared LLM settings."""

    constraints: tuple[str, ...] = field(
        default=DEFAULT_CONSTRAINTS,
        metadata={"help": "IFEval instruction ids that prompts draw from (comma-separated with --set)"},
    )
    constraints_per_prompt: int = field(
        default=2, metadata={"help": "instructions per prompt, 1 or 2 (reward: the fraction followed)"}
    )
    max_new_tokens: int = field(
        default=96,
        metadata={
            "help": "generation cap per completion; at 64 tokens most of the bundled model's "
            "'end with this phrase' answers are cut off (docs/tasks.md), failing end-of-answer instructions"
        },
    )
    on_topic: bool = field(
        default=False,
        metadata={
            "help": "also check, unstated in the prompt, that the answer names its topic's word: an answer "
            "that follows the instructions but drops the subject (an apology, an offer to help) fails it"
        },
    )
    max_repetition: float = field(
        default=1.0,
        metadata={
            "help": "also check, unstated, that at most this share of the answer's word 4-grams repeat an "
            "earlier one (`repetition`); 0.5 fails looping text, which follows 'no commas' easily; 1: off"
        },
    )
    min_words: int = field(
        default=0,
        metadata={
            "help": "also check, unstated, that the answer has at least this many words, on prompts without "
            "a word-count instruction of their own: the requests ask for a paragraph or a few sentences, "
            "which a one-line answer does not give; 0: off"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format_bonus != 0.0:
            raise ConfigError(
                f"problem.format_bonus must be 0 for instruct (it has no answer format); got "
                f"{self.format_bonus}, leave it out"
            )
        if self.constraints_per_prompt not in (1, 2):
            raise ConfigError(
                f"problem.constraints_per_prompt must be 1 or 2; got {self.constraints_per_prompt}, use 2"
            )
        if not self.constraints:
            raise ConfigError(f"problem.constraints is empty; use e.g. {','.join(DEFAULT_CONSTRAINTS)}")
        for name in self.constraints:
            if name not in ins.INSTRUCTIONS:
                raise ConfigError(
                    "problem.constraints: " + unknown_name("instruction", name, list(ins.INSTRUCTIONS))
                )
        if self.on_topic and ins.FORBIDDEN in self.constraints:
            raise ConfigError(
                f"problem.on_topic asks for the topic's word, which {ins.FORBIDDEN} forbids; drop "
                "that instruction from problem.constraints or leave problem.on_topic out"
            )
        if not 0.0 <= self.max_repetition <= 1.0:
            raise ConfigError(
                f"problem.max_repetition must be in [0, 1] (a share of word 4-grams); got "
                f"{self.max_repetition}, use 0.5 to fail looping answers or 1 for no check"
            )
        if not 0 <= self.min_words <= MIN_WORDS_MAX:
            raise ConfigError(
                f"problem.min_words must be in [0, {MIN_WORDS_MAX}] (the largest word count the task's own "
                f"instruction asks for); got {self.min_words}, use 25 for a few sentences or 0 for no check"
            )
        if len(set(self.constraints)) != len(self.constraints):
            raise ConfigError(f"problem.constraints lists an instruction twice: {','.join(self.constraints)}")
        if self.constraints_per_prompt == 2:
            for name in self.constraints:
                if not any(ins.compatible(name, other) for other in self.constraints):
                    raise ConfigError(
                        f"problem.constraints: {name} conflicts with every other enabled instruction, so "
                        "no prompt could ask for it with constraints_per_prompt=2; enable a compatible "
                        "one (e.g. keywords:existence) or set problem.constraints_per_prompt=1"
                    )


class Instruct(GeneratedTask):
    """Write a short paragraph under IFEval constraints; reward: the fraction of them followed."""

    name: ClassVar[str] = "instruct"
    Config: ClassVar[type[LLMConfig]] = InstructConfig
    config: InstructConfig

    def prompt(self, example: Example) -> str:
        return prompt_text(example)

    def reward(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
        rewards = []
        for text, example in zip(completions, examples, strict=True):
            followed = follows(text, example)
            rewards.append(sum(followed) / len(followed))  # exactly 1.0 when all are followed
        return rewards

    def reference(self, example: Example) -> str:
        """A templated answer that follows every instruction of the prompt (formulaic, but valid SFT)."""
        return witness(example)

    def breakdown(self, completions: Sequence[str], examples: Sequence[Example]) -> dict[str, Any]:
        """Per-check counts (followed, asked), how many answers name their topic's word, how many loop
        (over half their word 4-grams repeated), asked for or not, and the answers' median length in
        words: the drift strict compliance cannot see (docs/tasks.md)."""
        words = dict(TOPICS)
        named = sum(mentions(t, words[ex["topic"]]) for t, ex in zip(completions, examples, strict=True))
        lengths = [ins.count_words(t) for t in completions]
        return {
            "checks": constraint_report(completions, examples),
            "topic_named": [named, len(completions)],
            "repetitive": [sum(repetition(t) > LOOP for t in completions), len(completions)],
            "median_words": statistics.median(lengths) if lengths else 0,
        }

    def _key(self, row: dict[str, Any]) -> Any:
        return prompt_text(row)

    def _generate(self, size: int, rng: random.Random, seen: set[Any]) -> list[dict[str, Any]]:
        cfg = self.config
        choices: list[tuple[str, ...]]
        if cfg.constraints_per_prompt == 1:
            choices = [(name,) for name in cfg.constraints]
        else:
            choices = [pair for pair in combinations(cfg.constraints, 2) if ins.compatible(*pair)]
        rows: list[dict[str, Any]] = []
        for _ in range(50 * size):  # bounded: one instruction has len(TOPICS) x len(REQUESTS) prompts
            if len(rows) == size:
                return rows
            topic, word = rng.choice(TOPICS)
            request = rng.choice(REQUESTS).format(topic=topic)
            ids = list(rng.choice(choices))
            rng.shuffle(ids)
            row: dict[str, Any] = {
                "topic": topic,
                "request": request,
                "instruction_id_list": ids,
                "kwargs": [ins.INSTRUCTIONS[name].sample(rng, word) for name in ids],
            }
            if cfg.on_topic:
                row["topic_word"] = word  # the same prompts as without: only the check is added
            if cfg.max_repetition < 1.0:
                row["max_repetition"] = cfg.max_repetition
            if cfg.min_words and ins.NUMBER_WORDS not in ids:  # a prompt's own word count governs its length
                row["min_words"] = cfg.min_words
            text = prompt_text(row)
            if text not in seen:
                seen.add(text)
                rows.append(row)
        raise GfoError(
            f"could not generate {size} distinct instruct prompts; enable more problem.constraints, "
            "or lower problem.train_size/test_size"
        )


__getattr__ = lazy_problem(__name__, Instruct)


def prompt_text(example: Example) -> str:
    """The user message: the request about the topic, then each instruction's sentence."""
    pairs = zip(example["instruction_id_list"], example["kwargs"], strict=True)
    return " ".join([example["request"], *(ins.describe(n, kw) for n, kw in pairs)])


# Not IFEval ids: the checks `problem.on_topic`, `problem.max_repetition` and `problem.min_words` add.
ON_TOPIC = "topic:mentioned"
NO_REPETITION = "text:no_repetition"
MIN_WORDS = "length:min_words"
LOOP = 0.5  # repetition above this is a loop (the harness counts them; max_repetition=0.5 fails them)


def repetition(text: str, n: int = 4) -> float:
    """The share of `text`'s word n-grams (lowercased) that repeat an earlier one: 0 for text without
    repeats (or shorter than n words), near 1 for a loop. 62 of the bundled model's 500 no-comma
    answers are above `LOOP` (docs/tasks.md)."""
    words = ins.words(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def mentions(text: str, word: str) -> bool:
    """Whether `text` has `word` at the start of a word, in any case ("Dogs" names "dog", "hotdog" not)."""
    return re.search(r"\b" + re.escape(word), text, re.IGNORECASE) is not None


# Each guard: its check id, the example key that asks for it, and the check of (text, that key's value).
GUARDS: tuple[tuple[str, str, Any], ...] = (
    (ON_TOPIC, "topic_word", mentions),
    (NO_REPETITION, "max_repetition", lambda text, bound: repetition(text) <= float(bound)),
    (MIN_WORDS, "min_words", lambda text, bound: ins.count_words(text) >= int(bound)),
)


def checks(example: Example) -> list[str]:
    """What `example` is scored on: its instruction ids, then the `GUARDS` it carries."""
    guards = [name for name, key, _ in GUARDS if example.get(key) is not None]
    return [*example["instruction_id_list"], *guards]


def follows(text: str, example: Example) -> list[bool]:
    """Per check of `example` (`checks`), whether `text` passes it (IFEval's strict check).

    Text that is not a string, is longer than `MAX_COMPLETION_CHARS`, or has no word character at all
    follows nothing: an empty answer should not earn "no commas" or "all lowercase".
    """
    ids, kwargs = example["instruction_id_list"], example["kwargs"]
    if not isinstance(text, str) or len(text) > MAX_COMPLETION_CHARS or ins.count_words(text) == 0:
        return [False] * len(checks(example))
    passed = [ins.check(name, text, kw) for name, kw in zip(ids, kwargs, strict=True)]
    return passed + [ok(text, example[key]) for _, key, ok in GUARDS if example.get(key) is not None]


def constraint_report(completions: Sequence[str], examples: Sequence[Example]) -> dict[str, tuple[int, int]]:
    """Per check (`checks`: ids and guards), (completions that pass it, prompts that ask for it), sorted.

    IFEval's instruction-level accuracy is the pooled ratio; its strict prompt-level accuracy is the
    share of rewards equal to 1 (`correct / items` in `gfo eval`).
    """
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    counts: dict[str, tuple[int, int]] = {}
    for text, example in zip(completions, examples, strict=True):
        for name, ok in zip(checks(example), follows(text, example), strict=True):
            satisfied, total = counts.get(name, (0, 0))
            counts[name] = (satisfied + ok, total + 1)
    return dict(sorted(counts.items()))


# The witness's padding for "at least N words" and `problem.min_words`: 70 words, no comma, none of
# the topic words.
FILLER = (
    "Many people enjoy thinking about it on a quiet day.",
    "Some remember it fondly from years gone by.",
    "Others find new reasons to try it each week.",
    "It can bring calm after a long and busy stretch.",
    "Neighbors often share small stories about it.",
    "A few keep notes so the best parts stay close.",
    "It rarely fails to make somebody smile.",
    "There is always something more to learn about it.",
)


def witness(example: Example) -> str:
    """A short answer that follows every instruction of `example`, built from neutral filler words.

    It proves each generated prompt satisfiable (tested on thousands of prompts) and is the task's
    SFT reference. Filler words are none of the topic words, so a forbidden word never appears; the
    topic's word is named only for a `topic_word` example (`problem.on_topic`, never beside a
    forbidden word)."""
    given = dict(zip(example["instruction_id_list"], example["kwargs"], strict=True))
    opening = "This is a pleasant subject"  # 5 words: leaves room under the smallest word bound
    if example.get("topic_word"):
        opening = f"This is about {example['topic_word']}"
    if ins.EXISTENCE in given:
        opening += " that brings to mind " + " and ".join(given[ins.EXISTENCE]["keywords"])
    lines = [opening + "."]
    words = given.get(ins.NUMBER_WORDS)
    at_least = words["num_words"] if words is not None and words["relation"] == "at least" else 0
    filler = iter(FILLER)  # distinct sentences: a looped one would fail `problem.max_repetition`
    while ins.count_words(" ".join(lines)) < max(at_least, example.get("min_words", 0)):
        lines.append(next(filler))
    if ins.TITLE in given:
        lines.insert(0, "<<A Short Note>>")
    if ins.BULLETS in given:
        lines += [f"* Point {i + 1}." for i in range(given[ins.BULLETS]["num_bullets"])]
    if ins.POSTSCRIPT in given:
        lines.append(f"{given[ins.POSTSCRIPT]['postscript_marker']} Thank you for reading.")
    if ins.END in given:
        lines.append(given[ins.END]["end_phrase"])
    text = "\n".join(lines)
    if ins.LOWERCASE in given:
        text = text.lower()
    if ins.CAPITAL in given:
        text = text.upper()
    if ins.QUOTATION in given:
        text = f'"{text}"'
    if ins.JSON in given:
        text = json.dumps({"paragraph": text})
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m problems.instruct OUT/completions.jsonl`: compliance per instruction of a `gfo eval`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m problems.instruct OUT/completions.jsonl", file=sys.stderr)
        return 2
    try:
        rows = [json.loads(line) for line in Path(args[0]).read_text(encoding="utf-8").splitlines() if line]
        completions, examples = [r["completion"] for r in rows], [r["example"] for r in rows]
        report = constraint_report(completions, examples)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"cannot read {args[0]} as gfo eval completions: {exc}", file=sys.stderr)
        return 2
    rewards = Instruct(InstructConfig()).reward(completions, examples)
    print(f"{'instruction':<40} {'followed':>9} {'rate':>6}")
    for name, (satisfied, total) in report.items():
        print(f"{name:<40} {satisfied:>4}/{total:<4} {satisfied / total:>6.1%}")
    followed = sum(s for s, _ in report.values())
    asked = sum(t for _, t in report.values())
    print(f"{'instruction level':<40} {followed:>4}/{asked:<4} {followed / max(asked, 1):>6.1%}")
    strict = sum(r >= 1.0 for r in rewards)
    print(f"{'prompt level (strict)':<40} {strict:>4}/{len(rewards):<4} {strict / len(rewards):>6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
