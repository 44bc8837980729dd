"""Per-user rate limits (asyncio-throttle) and clean-up of what users type."""

from __future__ import annotations

import re
import time

from asyncio_throttle import Throttler

from core.errors import EmptyMessage, RateLimited

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u2028\u2029\ufeff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class UserRateLimiter:
    """`rate` messages per `period` seconds per user; over the limit is refused, not delayed.

    asyncio-throttle's `Throttler` would make the user wait silently; a chat user is better
    served by an immediate "slow down, try again in N s", so we look before we acquire.
    """

    def __init__(self, rate: int, period: float) -> None:
        self.rate = rate
        self.period = period
        self._throttlers: dict[str, Throttler] = {}

    async def check(self, user_id: str) -> None:
        throttler = self._throttlers.setdefault(user_id, Throttler(rate_limit=self.rate, period=self.period))
        throttler.flush()
        logs = throttler._task_logs  # the library's sliding window of recent acquisitions
        if len(logs) >= self.rate:
            raise RateLimited(max(1.0, self.period - (time.monotonic() - logs[0])))
        await throttler.acquire()


def clean_user_text(text: str, max_chars: int) -> tuple[str, str | None]:
    """Strip control characters and lone surrogates, trim to `max_chars`.

    Returns the cleaned text and a notice for the user when it had to be trimmed.
    Raises `EmptyMessage` when nothing is left to answer.
    """
    text = _SURROGATE.sub("\ufffd", text)
    text = _CONTROL.sub("", text).replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        raise EmptyMessage()
    if len(text) > max_chars:
        original = len(text)
        text = text[:max_chars]
        return text, f"Your message was {original:,} characters long; I only read the first {max_chars:,}."
    return text, None
