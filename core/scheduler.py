"""A bounded, fair queue of generation turns.

Requests are grouped per user and served round-robin, one running request per user, so one
user's burst cannot starve the others. The requester's own task does the work once its turn
comes. `ChatService.reply` drives the steps itself: `enqueue(user)` (raises `Busy` when the queue
is full, `ShuttingDown` after `close()`) gives a `Ticket`; while `ticket.ready` is not done it
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

from core.errors import Busy, ShuttingDown


@dataclass(eq=False)
class Ticket:
    user_id: str
    seq: int = 0
    ready: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FairScheduler:
    def __init__(self, max_waiting: int, concurrency: int = 1) -> None:
        self.max_waiting = max_waiting
        self.concurrency = concurrency
        self._waiting: dict[str, deque[Ticket]] = {}
        self._last_served: dict[str, int] = {}  # user -> serial of their latest turn
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
        order: list[Ticket] = []
        queues = [list(self._waiting[user]) for user in sorted(self._waiting, key=self._priority)]
        depth = 0
        while any(depth < len(queue) for queue in queues):
            order.extend(queue[depth] for queue in queues if depth < len(queue))
            depth += 1
        return order.index(ticket) + 1 if ticket in order else 0

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
        ticket = Ticket(user_id, seq=self._serial)
        self._waiting.setdefault(user_id, deque()).append(ticket)
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
    def _priority(self, user: str) -> tuple[int, int]:
        """Least recently served first; among never-served users, earliest arrival first."""
        return (self._last_served.get(user, 0), self._waiting[user][0].seq)

    def _dispatch(self) -> None:
        busy_users = {ticket.user_id for ticket in self._running}
        while len(self._running) < self.concurrency:
            candidates = [user for user in self._waiting if user not in busy_users]
            if not candidates:
                break
            user = min(candidates, key=self._priority)
            queue = self._waiting[user]
            ticket = queue.popleft()
            if not queue:
                del self._waiting[user]
            if ticket.ready.done():  # cancelled while waiting
                continue
            self._serial += 1
            self._last_served[user] = self._serial
            ticket.ready.set_result(None)
            self._running.add(ticket)
            busy_users.add(user)
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, ticket: Ticket, timeout: float | None = None) -> None:
        """Return when the queue moved (or `ticket` started, or `timeout` passed)."""
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({changed, ticket.ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
