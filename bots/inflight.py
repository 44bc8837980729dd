"""Replies in flight: what shutdown waits for, and what a restart has to mark as interrupted.

Shutdown stops taking messages, gives running replies `grace_s` to finish, then interrupts the
rest (each marks its message and gets a few seconds to say so). A process that was killed
(SIGKILL, OOM, power) had no such chance: `keep_marking_interrupted` edits the messages the store
remembers for unfinished turns, at start and then every `COLLECT_EVERY_S`, so no half reply is
left without a note, also one the store marks later (a process in another container or on another
host is known to be gone only once its lease runs out, about a minute after it stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from bots.text import Length, split_message
from core.service import ChatService

log = logging.getLogger(__name__)
COLLECT_EVERY_S = 15.0  # as often as the store looks for turns of stopped processes (its lease / 4)
ROUND_BOUND_S = 5.0  # how long a shutdown waits for a round of marking that is under way
ELLIPSIS = "…"


class InFlight:
    """The tasks answering right now."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()
        self.interrupt = asyncio.Event()  # set when the grace is over
        self.closing = False
        self._background: set[asyncio.Task[Any]] = set()

    def run_in_background(self, work: Coroutine[Any, Any, Any], name: str = "lorabot-background") -> None:
        """Run `work` as long as the bot runs (e.g. `keep_marking_interrupted`); shutdown cancels it."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
        background = set(self._background)
        for task in background:
            task.cancel()  # each ends the step it is in first (bounded)
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
        if background:
            await asyncio.wait(background, timeout=ROUND_BOUND_S + 1)


async def mark_interrupted(
    service: ChatService,
    platform: str,
    edit: Callable[[str, str], Awaitable[None]],
    *,
    limit: int,
    length: Length = len,
    note: str,
) -> int:
    """Edit the last message of every reply a killed process left unfinished; returns how many.
    `edit(ref, text)` is the platform's: for the ref of a reply that only a draft showed (no
    message exists, e.g. Telegram's "chat:draft:…") it sends `text` as a new message instead."""
    marked = 0
    for reply in await service.take_interrupted(platform):
        if not reply.handles:
            continue
        try:
            await edit(reply.handles[-1], with_restart_note(reply.shown, note, limit, length))
            marked += 1
        except Exception as error:  # deleted meanwhile, no access any more: nothing to mark
            log.info("could not mark interrupted reply %s: %s", reply.handles[-1], error)
    if marked:
        log.info("marked %d replies interrupted by the last restart", marked)
    return marked


async def keep_marking_interrupted(
    service: ChatService,
    platform: str,
    edit: Callable[[str, str], Awaitable[None]],
    *,
    limit: int,
    length: Length = len,
    note: str,
) -> None:
    """`mark_interrupted` now and every `COLLECT_EVERY_S` until cancelled (the bot's life): turns
    the store marks after start-up (a stopped process's lease ran out) get their note too."""
    while True:
        marking = asyncio.ensure_future(
            mark_interrupted(service, platform, edit, limit=limit, length=length, note=note)
        )
        try:
            await asyncio.shield(marking)
        except asyncio.CancelledError:
            # a shutdown lets the round end: a store write cut in the middle leaves its database
            # connection closing forever (aiosqlite), and a turn taken but not yet marked is lost
            await asyncio.wait({marking}, timeout=ROUND_BOUND_S)
            raise
        except Exception as error:  # the store is unavailable: the next round tries again
            log.warning("could not mark the replies of a stopped process: %s", error)
        await asyncio.sleep(COLLECT_EVERY_S)


def with_restart_note(shown: str, note: str, limit: int, length: Length = len) -> str:
    """The last message's own text (`shown`) with `note` under it, within `limit`: only the tail
    the note needs is cut (at a space when one is near, marked "…"), and a code fence left open by
    the cut is closed. Rows recorded by older versions hold the whole reply: its last message then
    is what splitting it at `limit` gives last."""
    text = shown.rstrip()
    if length(text) > limit:
        text = split_message(text, limit, length=length)[-1].rstrip()
    if not text.strip():
        return note
    if length(text) + 2 + length(note) <= limit:
        return f"{text}\n\n{note}"
    room = limit - length(note) - 2 - length(ELLIPSIS) - length("\n```")
    if room < 1:
        return note
    keep, used = 0, 0
    while keep < len(text) and used + length(text[keep]) <= room:
        used += length(text[keep])
        keep += 1
    space = text.rfind(" ", max(0, keep - 40), keep + 1)
    kept = text[: space if space > 0 else keep].rstrip() + ELLIPSIS
    if kept.count("```") % 2:
        kept += "\n```"
    return f"{kept}\n\n{note}"
