"""Errors `lorabot eval` reports as one clear line (the CLI prints them and exits with 2)."""

from __future__ import annotations


class EvalError(Exception):
    """Bad input to an evaluation: the message says what and how to fix it."""
