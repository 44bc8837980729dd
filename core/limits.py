"""Per-user rate limits (asyncio-throttle) and clean-up of what users type and models write."""

from __future__ import annotations

import re
import time

from asyncio_throttle import Throttler

from core.errors import EmptyMessage, RateLimited

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u2028\u2029\ufeff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# what no database (PostgreSQL refuses NUL) or chat platform should get from a model: C0 controls
# other than tab and line breaks, and DEL; zero-width characters stay (emoji sequences use them)
_MODEL_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


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


def clean_model_text(text: str) -> str:
    """Model output (or any text about to be stored or sent) without what the database, the
    platforms or UTF-8 refuse: control characters but tab and line breaks are dropped, a surrogate
    pair written as two code points is joined, and a lone surrogate becomes U+FFFD. Whitespace is
    kept (pieces of a stream are cleaned one by one). Text that needs nothing is returned as is."""
    if not _UNSAFE.search(text):
        return text
    text = _MODEL_CONTROL.sub("", text)
    if _SURROGATE.search(text):  # utf-16 joins valid pairs; "replace" turns lone halves into U+FFFD
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


class ModelTextCleaner:
    """`clean_model_text` for a stream of pieces: a high surrogate that ends a piece is held back
    for the next one, so a pair split across two pieces is joined instead of becoming two U+FFFD."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        piece = self._held + piece
        self._held = ""
        if piece and "\ud800" <= piece[-1] <= "\udbff":
            piece, self._held = piece[:-1], piece[-1]
        return clean_model_text(piece)

    def finish(self) -> str:
        """What is still held back (a lone high surrogate at the very end: U+FFFD)."""
        held, self._held = self._held, ""
        return clean_model_text(held)
