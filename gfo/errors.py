"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class GfoError(Exception):
    """Bad input: the message names the value, the rule and the fix."""


class ConfigError(GfoError):
    """A configuration value is missing, malformed or out of range."""
