"""One outbound budget per platform, shared by every reply being delivered.

Platforms limit how fast a bot may post: Telegram about 1 message/s per chat, 20/min per group
and 30/s overall; Discord 5 messages per 5 s per channel and 50 requests/s overall. A reply's
delivery task asks the `Pacer` for a slot before each call and only then reads the newest text,
so waiting for the platform never delays generation and stale text is never sent. Final texts
go first, then new messages, then in-between edits, then queue positions; typing indicators only
take a slot that is free right now.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.limits import KeyedWindows, SlidingWindow

FINAL, NEW_MESSAGE, EDIT, STATUS = range(4)  # priorities: lower goes first


@dataclass(frozen=True)
class Rule:
    """At most `limit` calls in any `seconds`-long window."""

    limit: int
    seconds: float


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    chat: str = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class Pacer:
    """Grants calls per chat and overall within `rules`, highest priority first."""

    def __init__(
        self,
        chat_rule: Callable[[str], Rule],
        overall: Rule,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_chats: int = 50_000,
    ) -> None:
        self._chat_rule = chat_rule
        self._overall = SlidingWindow(overall.limit, overall.seconds)
        # per chat: idle chats are dropped, at most max_chats kept (a chat's window only matters
        # while it holds calls of the last few seconds)
        self._chats = KeyedWindows(self._new_window, max_keys=max_chats)
        self._held: dict[str, float] = {}  # chat -> no calls before this time (after a 429)
        self._held_all = float("-inf")
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self.granted = 0

    def _new_window(self, chat: str) -> SlidingWindow:
        rule = self._chat_rule(chat)
        return SlidingWindow(rule.limit, rule.seconds)

    def _window(self, chat: str) -> SlidingWindow:
        return self._chats.get(chat, self._clock())

    @property
    def tracked_chats(self) -> int:
        """Chats whose recent calls (or 429 holds) the pacer keeps: bounded, not every chat ever."""
        return len(self._chats) + len(self._held)

    def _wait(self, chat: str, now: float, priority: int = FINAL) -> float:
        """In-between edits and queue positions leave a chat's last call free for a final text."""
        held = max(self._held.get(chat, float("-inf")), self._held_all) - now
        reserve = 1 if priority >= EDIT else 0
        return max(held, self._overall.wait(now), self._window(chat).wait(now, reserve), 0.0)

    def _take(self, chat: str, now: float) -> None:
        self._overall.times.append(now)
        self._window(chat).times.append(now)
        self.granted += 1

    async def acquire(self, chat: str, priority: int) -> None:
        """Wait for a slot to make one call in `chat`."""
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, _Waiter(priority, next(self._seq), chat, future))
        self._pump()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                pass  # granted just as we were cancelled: the slot is simply unused
            raise

    def try_acquire(self, chat: str) -> bool:
        """Take a slot only if one is free now and nobody is waiting in this chat (typing)."""
        now = self._clock()
        if (
            any(w.chat == chat and not w.future.done() for w in self._waiters)
            or self._wait(chat, now, STATUS) > 0
        ):
            return False
        self._take(chat, now)
        return True

    def hold(self, chat: str | None, seconds: float) -> None:
        """The platform said 429: no calls in `chat` (every chat if None) for `seconds`."""
        now = self._clock()
        until = now + seconds
        if chat is None:
            self._held_all = max(self._held_all, until)
        else:
            if len(self._held) >= 1024:  # holds that ended mean nothing: keep only the running ones
                self._held = {key: end for key, end in self._held.items() if end > now}
            self._held[chat] = max(self._held.get(chat, float("-inf")), until)
        self._pump()

    def _pump(self) -> None:
        """Grant every waiter that fits now, by priority; wake up again when the next one fits."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._clock()
        next_wake = float("inf")
        blocked: set[str] = set()  # chats whose best waiter must wait: lower ones wait too
        kept: list[_Waiter] = []
        for waiter in sorted(self._waiters):
            if waiter.future.done():
                continue
            if waiter.chat in blocked:
                kept.append(waiter)
                continue
            wait = self._wait(waiter.chat, now, waiter.priority)
            if wait > 0:
                blocked.add(waiter.chat)
                next_wake = min(next_wake, wait)
                kept.append(waiter)
                continue
            self._take(waiter.chat, now)
            waiter.future.set_result(None)
        heapq.heapify(kept)
        self._waiters = kept
        if kept and next_wake < float("inf"):
            self._timer = asyncio.get_running_loop().call_later(next_wake + 0.001, self._pump)
