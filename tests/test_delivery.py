"""ReplyView on its own: what a growing reply costs in platform calls.

The pacing is asserted on the view's own schedule: the sink stamps each call with the time the
view read from its clock just before making it (the view waits for `next_edit_interval_s` after
its last call on that clock). A slow moment on a busy machine only makes gaps longer, so these
lower bounds hold however loaded the machine is; wall-clock comparisons between gaps did not.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from bots.delivery import EDIT_GROWTH, ReplyView
from bots.pacing import Pacer, Rule

FLOAT_SLACK = 1e-9  # sums of clock readings, nothing more


class ViewClock:
    """The view's clock; `last` is the reading the view took most recently (in `_apply`, the
    time it counts the call from)."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self) -> float:
        self.last = time.monotonic()
        return self.last


class RecordingSink:
    """A platform that takes every call at once and remembers when, by the view's clock."""

    chat_key = typing_key = "chat"
    limit = 4096

    def __init__(self, clock: ViewClock) -> None:
        self.clock = clock
        self.calls: list[tuple[str, float, str]] = []

    def length(self, text: str) -> int:
        return len(text)

    async def send(self, text: str) -> int:
        self.calls.append(("send", self.clock.last, text))
        return len(self.calls)

    async def edit(self, handle: int, text: str) -> None:
        self.calls.append(("edit", self.clock.last, text))

    async def typing(self) -> None:
        self.calls.append(("typing", self.clock.last, ""))

    def ref(self, handle: int) -> str:
        return f"chat:{handle}"


def view_and_sink(**pace: float) -> tuple[ReplyView, RecordingSink]:
    clock = ViewClock()
    sink = RecordingSink(clock)
    pacer = Pacer(lambda chat: Rule(1000, 1.0), Rule(1000, 1.0))
    return ReplyView(sink, pacer, clock=clock, **pace), sink


async def stream(view: ReplyView, seconds: float, every_s: float = 0.02) -> str:
    text, started = "", time.monotonic()
    while time.monotonic() - started < seconds:
        text += "word "
        view.update(text)
        await asyncio.sleep(every_s)
    await view.finish(text)
    return text.strip()


def in_between_gaps(sink: RecordingSink) -> list[float]:
    """Seconds from each call to the in-between edit after it (the final edit may follow at once)."""
    times = [at for _, at, _ in sink.calls]
    return [after - before for before, after in itertools.pairwise(times[:-1])]


async def test_a_long_reply_is_edited_ever_less_often():
    """3 s of tokens with a 0.1 s edit interval: one edit per interval would be ~30 calls; the
    k-th in-between edit waits min(2 s, 0.1 s × EDIT_GROWTH^k) after the call before it, so the
    text still grows on screen but in a handful of edits."""
    view, sink = view_and_sink(edit_interval_s=0.1, max_edit_interval_s=2.0)
    text = await stream(view, 3.0)
    assert sink.calls[0][0] == "send" and sink.calls[-1][0] == "edit" and sink.calls[-1][2].strip() == text
    gaps = in_between_gaps(sink)
    assert len(gaps) >= 2, sink.calls  # the text grew on screen while it was generated
    for k, gap in enumerate(gaps):
        assert gap >= min(2.0, 0.1 * EDIT_GROWTH**k) - FLOAT_SLACK, (k, gaps)
    # the schedule after them: the next in-between edit would wait one step longer again
    assert view.next_edit_interval_s == pytest.approx(min(2.0, 0.1 * EDIT_GROWTH ** len(gaps)))


async def test_without_a_cap_above_the_interval_edits_keep_the_interval():
    view, sink = view_and_sink(edit_interval_s=0.3)  # max_edit_interval_s defaults to the interval
    await stream(view, 1.6)
    gaps = in_between_gaps(sink)
    assert len(gaps) >= 2, sink.calls
    assert all(gap >= 0.3 - FLOAT_SLACK for gap in gaps), gaps
    assert view.next_edit_interval_s == 0.3  # it never grew
