"""Platform-neutral helpers for putting model output into chat messages."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_FENCE = "```"
_CLOSE = "\n" + _FENCE
_LANGUAGE = re.compile(r"[\w+#.-]*")
Length = Callable[[str], int]


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: how Telegram counts its 4096 limit (an emoji counts 2)."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


@dataclass(frozen=True)
class Chunk:
    """One message: `body` is a slice of the original text, `opener`/`closer` are added fence markers.

    `closer` is "\\n```" when the cut fell inside a code fence; the next chunk then starts with
    `opener`, "```" + the fence's language + "\\n" (the language is dropped when it would take
    more than a quarter of the limit, so a reopened fence never eats the message).
    """

    opener: str
    body: str
    closer: str

    @property
    def text(self) -> str:
        return self.opener + self.body + self.closer


def split_message(text: str, limit: int, length: Length = len) -> list[str]:
    """Split `text` into messages of at most `limit`, measured with `length` (default: characters).

    Cuts at the last paragraph break, else line break, else sentence end, else space in the
    second half of the room, never inside a run of backticks, else wherever the room ends.
    What is guaranteed (`split_chunks` returns the parts, tests/test_text.py checks each):

    - every message is `opener + body + closer` with `length(message) <= limit` and a body that
      is not blank; blank `text` gives no message;
    - the bodies are slices of `text` in order: `text` is them joined, except for whitespace
      dropped at the cuts (before the first and after the last body, and between two bodies);
    - `closer` is "\n```" when the message is not the last and its `opener + body` leaves a code
      fence open (an odd number of "```"), else empty; the next message's `opener` is then
      "```" + that fence's language + "\n", or "```\n" when the language is not a plain word or
      would take more than a quarter of the limit, and otherwise empty;
    - it terminates: every message consumes at least one character of `text`.

    `length` must add up per character and count every character as at least 1: `len`, or
    `utf16_len` for Telegram, which counts its 4096 in UTF-16 code units.
    """
    return [chunk.text for chunk in split_chunks(text, limit, length)]


def split_chunks(text: str, limit: int, length: Length = len) -> list[Chunk]:
    """`split_message` with the added fence markers kept apart from the original text."""
    if limit < 20:
        raise ValueError("limit too small")
    chunks: list[Chunk] = []
    rest, opener = text, ""
    while rest.strip():
        if length(opener + rest) <= limit:
            chunks.append(Chunk(opener, rest, ""))
            break
        budget = limit - length(opener) - length(_CLOSE)  # room to close a fence if we cut inside one
        cut = _best_cut(rest, _fitting(rest, budget, length))
        body, rest = rest[:cut].rstrip(), _skip_cut_whitespace(rest[:cut], rest[cut:])
        if not body.strip():
            continue  # only whitespace before the cut: nothing to send, the fence state is unchanged
        # a fence left open is closed and reopened only when more text follows (the last closes nothing)
        inside = (opener + body).count(_FENCE) % 2 == 1 and bool(rest.strip())
        chunks.append(Chunk(opener, body, _CLOSE if inside else ""))
        opener = _reopener(opener + body, limit, length) if inside else ""
    return chunks


def _fitting(text: str, budget: int, length: Length) -> int:
    """How many leading characters of `text` fit in `budget` (at least one, so splitting advances)."""
    used = 0
    for index, char in enumerate(text[: max(budget, 1)]):
        used += length(char)
        if used > budget:
            return max(index, 1)
    return max(min(len(text), budget), 1)


def _best_cut(text: str, fit: int) -> int:
    """The last good boundary in the first `fit` characters, not before half of them."""
    window = text[:fit]
    floor = fit // 2
    for pattern in ("\n\n", "\n", r"[.!?](?=\s)", r"\s"):
        good = [m.end() for m in re.finditer(pattern, window) if m.end() >= floor]
        if good:
            return _outside_backticks(text, good[-1])
    return _outside_backticks(text, fit)


def _outside_backticks(text: str, cut: int) -> int:
    """Move a cut that would split a run of backticks (a fence marker) to the run's start."""
    if not (0 < cut < len(text) and text[cut - 1] == "`" and text[cut] == "`"):
        return cut
    start = cut
    while start > 0 and text[start - 1] == "`":
        start -= 1
    return start if start > 0 else cut  # a message that starts with the run: split it after all


def _skip_cut_whitespace(before: str, after: str) -> str:
    """Drop the whitespace at a cut, but keep the indentation of the line that follows it."""
    stripped = after.lstrip()
    if not stripped:
        return ""
    newline = after.rfind("\n", 0, len(after) - len(stripped))
    if newline != -1:
        return after[newline + 1 :]
    return after if before.endswith("\n") else stripped


def _reopener(chunk: str, limit: int, length: Length) -> str:
    """The fence opener for the next message, with the open fence's language if it fits."""
    start = chunk.rfind(_FENCE)
    line_end = chunk.find("\n", start)
    language = chunk[start + len(_FENCE) : line_end if line_end != -1 else len(chunk)].strip()
    opener = _FENCE + language + "\n"
    if not _LANGUAGE.fullmatch(language) or length(opener + _CLOSE) > limit // 4:
        return _FENCE + "\n"
    return opener
