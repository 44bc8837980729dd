"""Ratings from the chats: who rated (a pseudonym), and a writer that never delays a reply.

A 👍 arrives as a reaction or a button press and is handed to `RatingWriter.add`, which returns
at once: ratings wait in memory, coalesced per (answer, rater) so the latest wins (a flood of
reaction toggles becomes one write), and a background task stores them every `flush_s` in one
transaction (core/feedback_store.py). A store that refuses writes keeps them for the next round;
nothing the user did last is lost, and delivery never waits for the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, replace

from core.errors import StoreUnavailable
from core.feedback_store import PendingRating, write_ratings
from core.history import ConversationStore

log = logging.getLogger(__name__)
MAX_PENDING = 10_000  # ratings waiting for the store at most (the oldest are dropped beyond, logged)
LATER_PAUSE_S = 0.1  # between rounds while a rating waits for its message or answer to be stored
UP, DOWN = 1, -1


class Rated(enum.StrEnum):
    """What became of a rating handed in (adapters word it for the user)."""

    NOTED = "noted"
    OFF = "off"  # LORABOT_FEEDBACK=off
    OPTED_OUT = "opted_out"  # the user said /feedback off


@dataclass(frozen=True)
class Buttons:
    """Which buttons a final reply carries."""

    rate: bool  # 👍 👎
    regenerate: bool  # 🔁


class Pseudonyms:
    """Platform user ids → stable pseudonyms: HMAC-SHA256 with this database's salt, so the stored
    ratings and turns say "the same person" without saying who, and a copy of the database
    without its salt cannot be matched against known ids."""

    def __init__(self, salt: str) -> None:
        self._salt = salt.encode()

    def __call__(self, user_id: str) -> str:
        return hmac.new(self._salt, user_id.encode(), hashlib.sha256).hexdigest()[:32]


class RatingWriter:
    """Coalesces ratings and stores them in the background (see the module docstring)."""

    def __init__(self, store: ConversationStore, flush_s: float) -> None:
        self.store = store
        self.flush_s = flush_s
        self._pending: dict[tuple[object, ...], PendingRating] = {}
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # someone waits for the store: no pause between rounds
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.written = 0  # ratings that changed the store (for logs and tests)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lorabot-ratings")

    def add(self, rating: PendingRating) -> None:
        self._pending.pop(rating.key, None)  # the newest goes last (and is kept when trimming)
        self._pending[rating.key] = rating
        while len(self._pending) > MAX_PENDING:
            dropped = next(iter(self._pending))
            log.warning("ratings: the store is behind; dropped the oldest waiting rating")
            del self._pending[dropped]
        self._idle.clear()
        self._wake.set()

    async def flushed(self, timeout: float | None = None) -> bool:
        """Wait until every rating added so far is stored (False: `timeout` passed first)."""
        self._wake.set()  # no need to wait for the next round
        self._urgent.set()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Store what waits (up to `timeout`), then stop."""
        if self._task is None:
            return
        if self._pending and not await self.flushed(timeout):
            log.warning("ratings: %d rating(s) could not be stored before closing", len(self._pending))
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = list(self._pending.values())
            if not batch:
                self._idle.set()
                continue
            started = time.monotonic()
            later: list[PendingRating] = []
            try:
                changed, later = await write_ratings(self.store, batch)
                self.written += changed
            except StoreUnavailable:  # logged by the store; kept for the next round
                await asyncio.sleep(max(self.flush_s, 1.0))
                self._wake.set()
                continue
            except Exception:
                log.exception("ratings: a batch of %d could not be stored; dropped", len(batch))
            for rating in batch:
                if self._pending.get(rating.key) is rating:  # not replaced by a newer one meanwhile
                    del self._pending[rating.key]
            for rating in later:  # its message or answer was not recorded yet: next round
                self._pending.setdefault(rating.key, replace(rating, tries=rating.tries + 1))
            if later:  # what they wait for is stored a moment later: no tight loop of transactions
                await asyncio.sleep(min(self.flush_s, LATER_PAUSE_S))
            if self._pending:
                self._wake.set()
            else:
                self._idle.set()
            # coalesce: ratings arriving during the next flush_s go in one transaction
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self.flush_s - (time.monotonic() - started))):
                    await self._urgent.wait()
            if self._idle.is_set():
                self._urgent.clear()
