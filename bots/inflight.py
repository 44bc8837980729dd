"""Replies in flight: what shutdown waits for, and what a restart has to mark as interrupted.

Shutdown stops taking messages, gives running replies `grace_s` to finish, then interrupts the
rest (each marks its message and gets a few seconds to say so). A process that was killed
(SIGKILL, OOM, power) had no such chance: on the next start `mark_interrupted` edits the
messages the store remembers for unfinished turns, so no half reply is left without a note.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from bots.text import split_message
from core.service import ChatService

log = logging.getLogger(__name__)


class InFlight:
    """The tasks answering right now."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()
        self.interrupt = asyncio.Event()  # set when the grace is over
        self.closing = False

    @contextlib.asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            yield
        finally:
            self.tasks.discard(task)

    async def wait_idle(self, timeout: float = 30) -> None:
        """Until no reply is in flight (tests use it to know a reply is complete)."""
        async with asyncio.timeout(timeout):
            while self.tasks:
                await asyncio.wait(set(self.tasks))

    async def shutdown(self, grace_s: float, note_s: float = 5.0) -> None:
        """Finish within `grace_s + note_s` (plus a little), however the platform behaves."""
        self.closing = True
        pending = set(self.tasks)
        if pending and grace_s > 0:
            _, pending = await asyncio.wait(pending, timeout=grace_s)
        self.interrupt.set()
        for task in pending:
            task.cancel()
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=note_s + 1)
            if stuck:
                log.warning("%d replies did not stop in time; leaving them", len(stuck))
        if pending:
            log.info("interrupted %d replies at shutdown", len(pending))


async def mark_interrupted(
    service: ChatService,
    platform: str,
    edit: Callable[[str, str], Awaitable[None]],
    *,
    limit: int,
    length: Callable[[str], int] = len,
    note: str,
) -> int:
    """Edit the last message of every reply a killed process left unfinished; returns how many."""
    marked = 0
    for reply in await service.take_interrupted(platform):
        if not reply.handles:
            continue
        chunks = split_message(reply.shown, limit - length(note) - 2, length=length) if reply.shown.strip() else [""]
        text = f"{chunks[-1].rstrip()}\n\n{note}" if chunks[-1].strip() else note
        try:
            await edit(reply.handles[-1], text)
            marked += 1
        except Exception as error:  # deleted meanwhile, no access any more: nothing to mark
            log.info("could not mark interrupted reply %s: %s", reply.handles[-1], error)
    if marked:
        log.info("marked %d replies interrupted by the last restart", marked)
    return marked
