"""Platform-neutral helpers for putting model output into chat messages."""

from __future__ import annotations

import re

_FENCE = "```"


def split_message(text: str, limit: int) -> list[str]:
    """Split `text` into chunks of at most `limit` characters.

    Prefers paragraph breaks, then line breaks, then sentence ends, then spaces; a cut inside a
    code fence closes the fence in this chunk and reopens it in the next so each message renders.
    Joining the chunks gives back the text (apart from whitespace at the cuts and the fence
    markers added around a cut).
    """
    if limit < 20:
        raise ValueError("limit too small")
    chunks: list[str] = []
    rest = text
    reopen = ""
    while rest:
        rest = reopen + rest
        if len(rest) <= limit:
            chunks.append(rest)
            break
        budget = limit - len(_FENCE) - 1  # room to close a fence if we cut inside one
        cut = _best_cut(rest, budget)
        chunk, rest = rest[:cut].rstrip(), rest[cut:].lstrip("\n ")
        if chunk.count(_FENCE) % 2 == 1:
            language = _open_fence_language(chunk)
            chunk += "\n" + _FENCE
            reopen = _FENCE + language + "\n"
        else:
            reopen = ""
        if chunk.strip():
            chunks.append(chunk)
    return chunks


def _best_cut(text: str, budget: int) -> int:
    window = text[:budget]
    floor = budget // 2
    for pattern in ("\n\n", "\n", r"[.!?](?=\s)", r"\s"):
        positions = [m.end() for m in re.finditer(pattern, window)]
        good = [p for p in positions if p >= floor]
        if good:
            return good[-1]
    return budget


def _open_fence_language(chunk: str) -> str:
    start = chunk.rfind(_FENCE)
    line_end = chunk.find("\n", start)
    language = chunk[start + len(_FENCE) : line_end if line_end != -1 else len(chunk)]
    return language.strip() if re.fullmatch(r"[\w+#.-]*", language.strip()) else ""
