"""A task's reward called safely: one float per completion, NaN where it failed, and why.

A task may be third-party code; `LLMProblem` scores every candidate through `guarded_reward`, so a
reward that raises, hangs or returns something other than one number per completion costs that
candidate (NaN, ranked last by the loop), not the run.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

from gfo_llm.task import Example, Task


def guarded_reward(
    task: Task, completions: Sequence[str], examples: Sequence[Example], timeout_s: float | None
) -> tuple[list[float], str | None]:
    """`task.reward(completions, examples)` as one float per completion, and what went wrong (None:
    nothing).

    A task may be third-party code. A reward that raises, returns the wrong number of values or
    something that is not a number, or takes longer than `timeout_s` seconds, gives every completion
    NaN; a non-finite value becomes NaN where it is. Either way the candidate's fitness is NaN, which
    the loop counts and ranks last, and the run goes on. With a time limit the call runs in a daemon
    thread (no signal: `signal.alarm` works on the main thread only, and Ray actors evaluate
    elsewhere). A hung pure-Python reward cannot be killed: its thread is abandoned and may keep a
    core busy until the process exits.
    """
    n = len(completions)
    nan = [math.nan] * n
    try:
        returned = _call(task.reward, completions, examples, timeout_s)
    except TimeoutError:
        return nan, f"took more than {timeout_s:g} s on {_items(n)} (the call was abandoned)"
    except Exception as exc:
        culprit = _culprit(task, completions, examples, timeout_s)
        return nan, f"raised {type(exc).__name__}: {exc} on {culprit}"
    try:
        values = [float(v) for v in returned]
    except (TypeError, ValueError):
        return nan, f"returned {_short(returned)}, not one number per completion, on {_items(n)}"
    if len(values) != n:
        return nan, f"returned {len(values)} value(s) for {n} completion(s)"
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        fixed = [math.nan if i in bad else v for i, v in enumerate(values)]
        return fixed, f"returned {values[bad[0]]} on {_item(bad[0], examples)}{more}"
    return values, None


def _call(
    reward: Callable[[Sequence[str], Sequence[Example]], Any],
    completions: Sequence[str],
    examples: Sequence[Example],
    timeout_s: float | None,
) -> Any:
    if timeout_s is None:
        return reward(completions, examples)
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = reward(completions, examples)
        except Exception as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="gfo-reward", daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


def _culprit(
    task: Task, completions: Sequence[str], examples: Sequence[Example], timeout_s: float | None
) -> str:
    """The item a raising reward fails on: each is retried alone (rewards are pure functions)."""
    for i, (completion, example) in enumerate(zip(completions, examples, strict=True)):
        try:
            _call(task.reward, [completion], [example], timeout_s)
        except TimeoutError:
            break
        except Exception:
            return _item(i, examples)
    return _items(len(completions))


def _item(i: int, examples: Sequence[Example]) -> str:
    return f"item {i} of the batch {_short(examples[i])}"


def _items(n: int) -> str:
    return f"the batch of {n} item(s)"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(dict(value) if isinstance(value, dict) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
