"""A reply running in the background, for tests that watch it stream."""

from __future__ import annotations

import asyncio

from core.events import Delta, Done
from core.service import ChatService


class Reply:
    """`service.reply(...)` in a task of its own; `events` fills in as it streams. A reply that
    takes longer than `timeout_s` fails its test instead of blocking the suite."""

    def __init__(
        self, service: ChatService, conversation: str, text: str, user: str | None = None, *, timeout_s: float
    ) -> None:
        self.events: list[object] = []
        self.timeout_s = timeout_s
        self.task = asyncio.create_task(
            self._run(service, conversation, user or f"user-{conversation}", text)
        )

    async def _run(self, service: ChatService, conversation: str, user: str, text: str) -> Done:
        async with asyncio.timeout(self.timeout_s):
            async for event in service.reply(conversation, user, text):
                self.events.append(event)
        return next(e for e in self.events if isinstance(e, Done))

    @property
    def deltas(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, Delta)]

    async def done(self) -> Done:
        return await self.task
