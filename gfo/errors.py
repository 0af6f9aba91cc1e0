"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class GfoError(Exception):
    """Bad input: the message names the value, the rule and the fix."""


class ConfigError(GfoError):
    """A configuration value is missing, malformed or out of range."""


def first_line(error: BaseException) -> str:
    """An exception's message in one line (its type's name if it has none): for warnings and logs."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
