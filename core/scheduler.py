"""A bounded, fair queue of generation turns.

Requests are grouped per user and served round-robin, one running request per user, so one
user's burst cannot starve the others: everyone's next question comes before anyone's second one
(a user's running request counts as their question of this round), and within a round questions
are served in the order they arrived. So a new question's place only ever moves forward, and
the wait it is told at admission holds while users keep arriving. The requester's own task does
the work once its turn comes. `ChatService.reply` drives the steps itself: `enqueue(user)`
(raises `Busy` when the queue is full, `ShuttingDown` after `close()`) gives a `Ticket`; while
`ticket.ready` is not done it
reports `position(ticket)` as a `Queued` event whenever that changes and awaits
`wait_for_change(ticket)`; once ready it generates; and `release(ticket)`, in a `finally`, leaves
the queue or frees the running slot. Cancelling the requester's task therefore is all it takes to
leave the queue or stop a running request. `turn(user)` wraps enqueue/wait/release in one
`async with` for callers that need no position updates (the tests).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from core.errors import Busy, ShuttingDown


@dataclass(eq=False)
class Ticket:
    user_id: str
    seq: int = 0  # arrival order
    round: int = 0  # how many of the user's questions were waiting or running when it came
    ready: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def order(self) -> tuple[int, int]:
        """Serving order: rounds first, then arrival."""
        return (self.round, self.seq)


class FairScheduler:
    def __init__(self, max_waiting: int, concurrency: int = 1) -> None:
        self.max_waiting = max_waiting
        self.concurrency = concurrency
        self._waiting: dict[str, deque[Ticket]] = {}
        self._serial = 0
        self._running: set[Ticket] = set()
        self._closed = False
        self._changed = asyncio.Event()

    # -- introspection -------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    @property
    def running(self) -> int:
        return len(self._running)

    def waiting_for(self, user_id: str) -> int:
        """How many of `user_id`'s requests wait (not counting one that runs)."""
        return len(self._waiting.get(user_id, ()))

    def position(self, ticket: Ticket) -> int:
        """1-based place in the order the queue will be served (0 once running)."""
        if ticket in self._running:
            return 0
        if ticket not in self._waiting.get(ticket.user_id, ()):
            return 0
        return 1 + sum(other.order < ticket.order for queue in self._waiting.values() for other in queue)

    # -- the public context manager ------------------------------------------------------
    @asynccontextmanager
    async def turn(self, user_id: str) -> AsyncIterator[Ticket]:
        """Wait for this user's turn, hold it for the body, release it afterwards (no position
        updates; `ChatService.reply` calls enqueue/position/wait_for_change/release itself)."""
        ticket = self.enqueue(user_id)
        try:
            await ticket.ready
            yield ticket
        finally:
            self.release(ticket)

    def enqueue(self, user_id: str) -> Ticket:
        if self._closed:
            raise ShuttingDown()
        if self.waiting >= self.max_waiting:
            raise Busy(self.waiting)
        self._serial += 1
        queue = self._waiting.setdefault(user_id, deque())
        running = sum(other.user_id == user_id for other in self._running)
        ticket = Ticket(user_id, seq=self._serial, round=len(queue) + running)
        queue.append(ticket)
        self._dispatch()
        return ticket

    def release(self, ticket: Ticket) -> None:
        """Leave the queue (if waiting) or free the running slot (if running)."""
        if ticket in self._running:
            self._running.discard(ticket)
        else:
            queue = self._waiting.get(ticket.user_id)
            if queue and ticket in queue:
                queue.remove(ticket)
                if not queue:
                    del self._waiting[ticket.user_id]
            if not ticket.ready.done():
                ticket.ready.cancel()
        self._dispatch()

    def close(self) -> None:
        """Refuse new requests and fail every waiting one with `ShuttingDown`."""
        self._closed = True
        for queue in self._waiting.values():
            for ticket in queue:
                if not ticket.ready.done():
                    ticket.ready.set_exception(ShuttingDown())
        self._waiting.clear()
        self._notify()

    # -- internals -----------------------------------------------------------------------
    def _dispatch(self) -> None:
        busy_users = {ticket.user_id for ticket in self._running}
        while len(self._running) < self.concurrency:
            candidates = [user for user in self._waiting if user not in busy_users]
            if not candidates:
                break
            user = min(candidates, key=lambda user: self._waiting[user][0].order)
            queue = self._waiting[user]
            ticket = queue.popleft()
            if not queue:
                del self._waiting[user]
            if ticket.ready.done():  # cancelled while waiting
                continue
            ticket.ready.set_result(None)
            self._running.add(ticket)
            busy_users.add(user)
        self._notify()

    async def wait_idle(self) -> None:
        """Return once no request runs (release() notifies every change)."""
        while self._running:
            await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, ticket: Ticket, timeout: float | None = None) -> None:
        """Return when the queue moved (or `ticket` started, or `timeout` passed)."""
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            waiters: set[asyncio.Future[Any]] = {changed, ticket.ready}
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
