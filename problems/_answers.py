"""Reading answers out of untrusted model text: numbers, `#### N` lines and arithmetic expressions.

Everything here is bounded: completions longer than `MAX_COMPLETION_CHARS` are not read, numbers
longer than `MAX_DIGITS` digits are not numbers, expressions are length- and depth-limited and
evaluated with exact `Fraction`s from an `ast` node whitelist (never `eval`). No function raises
on any string. The extraction rules follow lm-evaluation-harness's GSM8K filters: a strict
`#### N` match, else a flexible last-number match.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

MAX_COMPLETION_CHARS = 20_000  # a longer completion scores 0: no real answer needs that much text
MAX_DIGITS = 40  # int() of a 5,000-digit string raises in Python >= 3.11; real answers are short
MAX_EXPRESSION_CHARS = 200
MAX_EXPRESSION_DEPTH = 32

# A number as models write it: "-5", "$1,234", "1,000.00", "72.0". ASCII digits only, since
# `\d` would also accept Arabic-Indic and other Unicode digits. A minus is a sign only when it does
# not follow a word or a closing bracket ("10-4" is a subtraction, so its last number is 4).
_NUMBER = (
    r"(?:(?<![0-9A-Za-z)\]])(?P<neg>[-−]))?\$?"
    r"(?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.(?P<frac>[0-9]+))?"
)
_NUMBER_RE = re.compile(r"(?<![0-9.])" + _NUMBER)
_STRICT_RE = re.compile(r"####[ \t]*" + _NUMBER)
#: A finished strict answer line ("#### 42" and its newline): the strict filter reads nothing after
#: it, so a task whose prompt asks for that line can stop generating there (`Task.stop`).
ANSWER_LINE = r"####[ \t]*[-−$]?[0-9][^\n]*\n"
_STATED_RE = re.compile(r"answer(?:[ \t]+is|[ \t]*:)[ \t:]*\**[ \t]*" + _NUMBER, re.IGNORECASE)


def _to_fraction(match: re.Match[str]) -> Fraction | None:
    integer, frac = match["int"].replace(",", ""), match["frac"] or ""
    if len(integer) + len(frac) > MAX_DIGITS:
        return None
    value = Fraction(int(integer + frac), 10 ** len(frac))
    return -value if match["neg"] else value


def parse_number(text: str) -> Fraction | None:
    """The number a whole string spells ("$1,000.00" -> 1000), or None if it is not one number."""
    if not isinstance(text, str) or len(text) > 2 * MAX_DIGITS:
        return None
    match = re.fullmatch(_NUMBER, text.strip().rstrip("."))
    return _to_fraction(match) if match else None


def strict_answer(text: str) -> Fraction | None:
    """The number after the first `#### ` (lm-eval's strict filter keeps the first match too)."""
    match = _STRICT_RE.search(text)
    return _to_fraction(match) if match else None


def stated_answer(text: str) -> Fraction | None:
    """The number after the first "answer is" / "answer:" ("The answer is $1,234." -> 1234)."""
    match = _STATED_RE.search(text)
    return _to_fraction(match) if match else None


def last_number(text: str) -> Fraction | None:
    """The last number in the text (lm-eval's flexible filter)."""
    last = None
    for last in _NUMBER_RE.finditer(text):  # noqa: B007 - only the final match is wanted
        pass
    return _to_fraction(last) if last else None


def extract_answer(text: str) -> tuple[Fraction | None, bool]:
    """(answer, strict): the first `#### N`, else the first "answer is N", else the last number.

    The first marked answer wins over later ones because a looping model tends to go on with a new,
    invented question after answering; `strict` says whether the `#### N` format was used.
    """
    if not isinstance(text, str) or len(text) > MAX_COMPLETION_CHARS:
        return None, False
    strict = strict_answer(text)
    if strict is not None:
        return strict, True
    stated = stated_answer(text)
    return (stated if stated is not None else last_number(text)), False


def numeric_rewards(
    completions: Sequence[str], targets: Sequence[Any], format_bonus: float = 0.0
) -> list[float]:
    """1 per completion whose extracted answer equals its target, plus `format_bonus` if strict."""
    if len(completions) != len(targets):
        raise ValueError(f"{len(completions)} completions but {len(targets)} examples")
    rewards = []
    for text, target in zip(completions, targets, strict=True):
        answer, strict = extract_answer(text)
        gold = parse_number(str(target))
        correct = answer is not None and answer == gold
        rewards.append(float(correct) + (format_bonus if strict else 0.0))
    return rewards


_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def evaluate_expression(expression: str) -> tuple[Fraction, list[int]] | None:
    """Exact value and the integer literals of `+ - * /` arithmetic, or None if it is anything else.

    Whitelist: BinOp(Add, Sub, Mult, Div), UnaryOp(USub), int Constant; parentheses are implicit in
    the tree. Division by zero, floats, names, calls, `**` and over-long or over-deep input give None.
    """
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_CHARS:
        return None
    # The tokenizer would accept "1_000" and non-ASCII digits; a model answer should use neither.
    if not re.fullmatch(r"[0-9+\-*/() \t]+", expression):
        return None
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    literals: list[int] = []
    value = _evaluate(tree.body, literals, 0)
    return None if value is None else (value, literals)


def _evaluate(node: ast.AST, literals: list[int], depth: int) -> Fraction | None:
    if depth > MAX_EXPRESSION_DEPTH:
        return None
    if isinstance(node, ast.Constant) and type(node.value) is int:
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        operand = _evaluate(node.operand, literals, depth + 1)
        return None if operand is None else -operand
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left = _evaluate(node.left, literals, depth + 1)
        right = _evaluate(node.right, literals, depth + 1)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        return None if right == 0 else left / right
    return None
