"""Sliding-window rate limits keyed by user or chat (idle keys dropped, so the tables stay bounded)
and clean-up of what users type and models write."""

from __future__ import annotations

import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from core.errors import EmptyMessage, RateLimited

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u2028\u2029\ufeff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# what no database (PostgreSQL refuses NUL) or chat platform should get from a model: C0 controls
# other than tab and line breaks, and DEL; zero-width characters stay (emoji sequences use them)
_MODEL_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


class SlidingWindow:
    """At most `limit` events in any `seconds`-long window: the times of the recent events."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self.times: deque[float] = deque()

    def wait(self, now: float, reserve: int = 0) -> float:
        """Seconds until one more event fits, leaving `reserve` events of the window unused."""
        while self.times and self.times[0] <= now - self.seconds:
            self.times.popleft()
        allowed = max(1, self.limit - reserve)
        if len(self.times) < allowed:
            return 0.0
        return self.times[len(self.times) - allowed] + self.seconds - now

    def add(self, now: float) -> None:
        self.times.append(now)

    def idle(self, now: float) -> bool:
        """No event inside the window: forgetting it changes nothing."""
        return not self.times or self.times[-1] <= now - self.seconds


class KeyedWindows:
    """One `SlidingWindow` per key (user, chat), made by `make` on first use.

    Keys seen once would otherwise stay forever (100k users, 100k windows): idle windows are
    dropped in a sweep every so often (amortized O(1) per use), and beyond `max_keys` the least
    recently used are dropped even if not idle, so memory is bounded under any flood of new keys."""

    def __init__(self, make: Callable[[str], SlidingWindow], *, max_keys: int = 50_000) -> None:
        self._make = make
        self._windows: OrderedDict[str, SlidingWindow] = OrderedDict()  # least recently used first
        self.max_keys = max_keys
        self._uses = 0
        self._sweep_after = 1024  # uses until the next sweep: as many as the windows kept by the last

    def __len__(self) -> int:
        return len(self._windows)

    def get(self, key: str, now: float) -> SlidingWindow:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = self._make(key)
        else:
            self._windows.move_to_end(key)
        self._uses += 1
        if self._uses >= self._sweep_after or len(self._windows) > self.max_keys:
            self.sweep(now, keep=key)
        return window

    def sweep(self, now: float, keep: str | None = None) -> None:
        """Drop idle windows, then the least recently used beyond `max_keys` (never `keep`)."""
        self._uses = 0
        for key in [k for k, w in self._windows.items() if k != keep and w.idle(now)]:
            del self._windows[key]
        while len(self._windows) > self.max_keys:
            oldest = next(iter(self._windows))
            if oldest == keep:
                self._windows.move_to_end(oldest)
                continue
            del self._windows[oldest]
        self._sweep_after = max(1024, len(self._windows))


class UserRateLimiter:
    """`rate` messages per `period` seconds per user; over the limit is refused, not delayed
    (a chat user is better served by an immediate "slow down, try again in N s")."""

    def __init__(
        self,
        rate: int,
        period: float,
        *,
        max_users: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.period = period
        self._clock = clock
        self.windows = KeyedWindows(lambda _user: SlidingWindow(rate, period), max_keys=max_users)

    async def check(self, user_id: str) -> None:
        now = self._clock()
        window = self.windows.get(user_id, now)
        wait = window.wait(now)
        if wait > 0:
            raise RateLimited(max(1.0, wait))
        window.add(now)


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
