"""Show a growing reply as platform messages: throttled edits, overflow into new messages.

Adapters give a small `MessageSink` (send a message, edit one); `LiveReply` decides when to
edit and how to split, so Discord and Telegram share one tested implementation.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

from bots.text import split_message


class SlowDown(Exception):
    """Raised by a sink when the platform answered 429; `retry_after` is in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited, retry after {retry_after} s")
        self.retry_after = retry_after


class MessageSink(Protocol):
    async def send(self, text: str) -> Any:
        """Send a new message and return a handle that `edit` accepts."""

    async def edit(self, handle: Any, text: str) -> None:
        """Replace the text of a message sent earlier."""


@dataclass
class _Shown:
    handle: Any
    text: str


class LiveReply:
    """One reply, possibly spread over several messages, kept in step with the model's text."""

    def __init__(
        self,
        sink: MessageSink,
        *,
        limit: int,
        edit_interval_s: float = 1.0,
        max_retries: int = 5,
        clock=time.monotonic,
    ) -> None:
        self.sink = sink
        self.limit = limit
        self.edit_interval_s = edit_interval_s
        self.max_retries = max_retries
        self._clock = clock
        self._shown: list[_Shown] = []
        self._last_render = float("-inf")
        self._not_before = float("-inf")

    @property
    def handles(self) -> list[Any]:
        return [shown.handle for shown in self._shown]

    async def status(self, text: str) -> None:
        """Show a status line (queued, thinking) in the first message until text arrives."""
        await self._render([text], final=False, force=True)

    async def update(self, text: str) -> None:
        """Show `text` if the edit interval has passed; otherwise wait for a later call."""
        now = self._clock()
        if now - self._last_render < self.edit_interval_s or now < self._not_before:
            return
        if text.strip():
            await self._render(split_message(text, self.limit), final=False)

    async def finish(self, text: str) -> None:
        """Show the complete text, retrying after 429s so nothing is lost."""
        chunks = split_message(text, self.limit) if text.strip() else ["(no answer)"]
        await self._render(chunks, final=True)

    async def _render(self, chunks: list[str], *, final: bool, force: bool = False) -> None:
        if final or force:
            wait = self._not_before - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)  # a skipped edit's flood wait still applies
        self._last_render = self._clock()
        for index, chunk in enumerate(chunks):
            if index < len(self._shown):
                shown = self._shown[index]
                if shown.text == chunk:
                    continue
                edited, _ = await self._call(self.sink.edit, shown.handle, chunk, final=final or force)
                if not edited:
                    return  # rate limited mid-stream: the next update or finish() catches up
                shown.text = chunk
            else:
                _, handle = await self._call(self.sink.send, chunk, final=True)
                self._shown.append(_Shown(handle, chunk))

    async def _call(self, method, *args, final: bool) -> tuple[bool, Any]:
        """Call the sink; on 429 skip a non-final edit, or wait and retry a final one."""
        for _ in range(self.max_retries):
            try:
                return True, await method(*args)
            except SlowDown as slow:
                self._not_before = self._clock() + slow.retry_after
                if not final:
                    return False, None
                await asyncio.sleep(slow.retry_after)
        return True, await method(*args)
