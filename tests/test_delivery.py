"""ReplyView on its own: what a growing reply costs in platform calls."""

from __future__ import annotations

import asyncio
import time

from bots.delivery import EDIT_GROWTH, ReplyView
from bots.pacing import Pacer, Rule


class RecordingSink:
    """A platform that takes every call at once and remembers when it came."""

    chat_key = typing_key = "chat"
    limit = 4096

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, str]] = []

    def length(self, text: str) -> int:
        return len(text)

    async def send(self, text: str) -> int:
        self.calls.append(("send", time.monotonic(), text))
        return len(self.calls)

    async def edit(self, handle: int, text: str) -> None:
        self.calls.append(("edit", time.monotonic(), text))

    async def typing(self) -> None:
        self.calls.append(("typing", time.monotonic(), ""))

    def ref(self, handle: int) -> str:
        return f"chat:{handle}"


async def stream(view: ReplyView, seconds: float, every_s: float = 0.02) -> str:
    text, started = "", time.monotonic()
    while time.monotonic() - started < seconds:
        text += "word "
        view.update(text)
        await asyncio.sleep(every_s)
    await view.finish(text)
    return text.strip()


async def test_a_long_reply_is_edited_ever_less_often():
    """3 s of tokens with a 0.1 s edit interval: one edit per interval would be ~30 calls; each
    in-between edit waits EDIT_GROWTH times longer than the one before (up to the cap), so the text
    still grows on screen but in a handful of edits."""
    sink = RecordingSink()
    pacer = Pacer(lambda chat: Rule(1000, 1.0), Rule(1000, 1.0))
    view = ReplyView(sink, pacer, edit_interval_s=0.1, max_edit_interval_s=2.0)
    text = await stream(view, 3.0)
    edits = [(at, shown) for kind, at, shown in sink.calls if kind == "edit"]
    assert sink.calls[0][0] == "send" and edits[-1][1].strip() == text
    assert 4 <= len(edits) <= 10, len(edits)
    gaps = [b[0] - a[0] for a, b in zip(edits, edits[1:-1])]  # the final edit may follow at once
    for before, after in zip(gaps, gaps[1:]):
        assert after >= min(2.0, before * EDIT_GROWTH) * 0.9, gaps


async def test_without_a_cap_above_the_interval_edits_keep_the_interval():
    sink = RecordingSink()
    pacer = Pacer(lambda chat: Rule(1000, 1.0), Rule(1000, 1.0))
    view = ReplyView(sink, pacer, edit_interval_s=0.3)  # max_edit_interval_s defaults to the interval
    await stream(view, 1.6)
    edits = [at for kind, at, _ in sink.calls if kind == "edit"]
    assert len(edits) >= 4  # ~1.6 / 0.3
    assert all(b - a >= 0.3 * 0.9 for a, b in zip(edits, edits[1:-1]))
