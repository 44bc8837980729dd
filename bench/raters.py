"""Raters for `lorabot bench loop`: a simulated user's taste, as a function of question and answer.

A rater is any callable `(question: str, answer: str) -> verdict`, the verdict one of "up" (👍),
"down" (👎) or "again" (👎 then 🔁: the user wants another answer, and rates that one too); the
emoji and True/False (👍/👎) are accepted as well. `--rater brief` / `--rater listy` pick a shipped
one, `--rater FILE.py:FUNC` any function in any file, so a preference nobody here wrote can be
plugged in. A rater sees what the user sees: the answer's text as the platform shows it.

The shipped raters like things a 135M model can learn from a few hundred ratings (docs/benchmarks.md,
"Learning loop"): a surface property of the whole answer that the model already shows now and then
(so some answers are 👍 from the start) and that does not depend on knowing facts. Their 🔁 is
deterministic (a hash of the answer), so a run can be repeated.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

Verdict = Literal["up", "down", "again"]
Rater = Callable[[str, str], object]

BRIEF_WORDS = 40  # `brief` likes answers of at most this many words
AGAIN_EVERY = 4  # about 1 in this many disliked answers gets a 🔁 instead of a plain 👎
_LIST_ITEM = re.compile(r"(?m)^[ \t]*(?:\d{1,2}[.)]|[-*•])[ \t]+\S")


class RaterError(ValueError):
    """A rater that cannot be loaded, raised, or answered something that is no verdict."""


def _sometimes_again(answer: str) -> Verdict:
    """'again' for about 1 in AGAIN_EVERY answers (the same answer always gets the same), else 'down'."""
    return "again" if zlib.crc32(answer.encode()) % AGAIN_EVERY == 0 else "down"


def words(text: str) -> int:
    return len(text.split())


def list_items(text: str) -> int:
    """Lines that are numbered ("1.", "2)") or bulleted ("-", "*", "•") items."""
    return len(_LIST_ITEM.findall(text))


def brief(question: str, answer: str) -> Verdict:
    """👍 an answer of at most BRIEF_WORDS words; 👎 a longer one, and now and then 🔁."""
    return "up" if words(answer) <= BRIEF_WORDS else _sometimes_again(answer)


def listy(question: str, answer: str) -> Verdict:
    """👍 an answer that is (or holds) a numbered or bulleted list of at least two items; 👎 prose,
    and now and then 🔁."""
    return "up" if list_items(answer) >= 2 else _sometimes_again(answer)


SHIPPED: dict[str, Callable[[str, str], Verdict]] = {"brief": brief, "listy": listy}
_VERDICTS: dict[object, Verdict] = {
    "up": "up",
    "down": "down",
    "again": "again",
    "👍": "up",
    "👎": "down",
    "🔁": "again",
}


def load_rater(spec: str) -> tuple[str, Rater]:
    """(name, function) for `brief`, `listy` or `FILE.py:FUNC`; RaterError says what is wrong."""
    if spec in SHIPPED:
        return spec, SHIPPED[spec]
    path_text, sep, function = spec.rpartition(":")
    if not sep or not path_text or not function:
        raise RaterError(f"--rater {spec!r}: give a shipped rater ({', '.join(SHIPPED)}) or FILE.py:FUNCTION")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise RaterError(f"--rater {spec!r}: no file {path}")
    module_name = f"lorabot_rater_{zlib.crc32(str(path.resolve()).encode()):08x}"
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise RaterError(f"--rater {spec!r}: {path} is not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    except RaterError:
        raise
    except Exception as error:  # noqa: BLE001 (any error of the user's file is reported as one line)
        raise RaterError(
            f"--rater {spec!r}: importing {path} failed: {type(error).__name__}: {error}"
        ) from None
    rater = getattr(module, function, None)
    if rater is None:
        raise RaterError(f"--rater {spec!r}: {path} has no {function!r}")
    if not callable(rater):
        raise RaterError(f"--rater {spec!r}: {function!r} in {path} is not a function")
    return f"{path.name}:{function}", rater


def verdict(rater: Rater, name: str, question: str, answer: str) -> Verdict:
    """The rater's verdict on one answer; RaterError when it raises or returns something else."""
    try:
        value = rater(question, answer)
    except Exception as error:  # noqa: BLE001 (the bench stops, saying which rater and on what)
        raise RaterError(
            f"rater {name} raised {type(error).__name__}: {error} (rating the answer to {question!r})"
        ) from error
    if isinstance(value, bool):
        return "up" if value else "down"
    if isinstance(value, str) and value.strip().lower() in _VERDICTS:
        return _VERDICTS[value.strip().lower()]
    raise RaterError(
        f"rater {name} returned {value!r} for the answer to {question!r}: "
        "it must return 'up', 'down' or 'again' (or 👍, 👎, 🔁, True, False)"
    )
