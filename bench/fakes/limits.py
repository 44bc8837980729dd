"""The platforms' published rate limits, enforced by the fake servers.

Each limit is a sliding window ("at most N calls in any W seconds"); a call over it is refused
with the platform's 429 and the seconds until the window has room again. The numbers are the
documented ones:

- Telegram (core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this): about one
  message per second in a chat (short bursts tolerated: 3 in 3 s here), 20 per minute in a group,
  30 per second overall. Sends and edits count in the chat; chat actions ("typing") only overall.
- Discord (discord.com/developers/docs/topics/rate-limits): 50 requests per second per bot
  (global), and per-route buckets; messages in one channel: 5 per 5 s.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Window:
    """At most `limit` events in any `seconds`-long window."""

    limit: int
    seconds: float
    events: deque[float] = field(default_factory=deque)

    def _trim(self, now: float) -> None:
        while self.events and self.events[0] <= now - self.seconds:
            self.events.popleft()

    def wait(self, now: float) -> float:
        """Seconds until one more event fits (0 if it fits now)."""
        self._trim(now)
        if len(self.events) < self.limit:
            return 0.0
        return self.events[0] + self.seconds - now

    def take(self, now: float) -> None:
        self.events.append(now)

    def remaining(self, now: float) -> int:
        self._trim(now)
        return self.limit - len(self.events)

    def reset_after(self, now: float) -> float:
        self._trim(now)
        return (self.events[0] + self.seconds - now) if self.events else 0.0


class Limits:
    """Named windows created on demand from a template, e.g. one per chat."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._windows: dict[str, Window] = {}
        self.refused = 0  # calls answered 429

    def window(self, key: str, limit: int, seconds: float) -> Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = Window(limit, seconds)
        return window

    def check(self, windows: list[Window]) -> float:
        """Take one event in every window, or none and return the longest wait (a 429)."""
        now = self.clock()
        wait = max((window.wait(now) for window in windows), default=0.0)
        if wait > 0:
            self.refused += 1
            return wait
        for window in windows:
            window.take(now)
        return 0.0


@dataclass(frozen=True)
class TelegramLimits:
    private_per_3s: int = 3
    group_per_minute: int = 20
    overall_per_second: int = 30


@dataclass(frozen=True)
class DiscordLimits:
    global_per_second: int = 50
    channel_messages_per_5s: int = 5


def whole_seconds(wait: float) -> int:
    """Telegram's retry_after is a whole number of seconds, never 0."""
    return max(1, math.ceil(wait))
