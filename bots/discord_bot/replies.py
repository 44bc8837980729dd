"""Render one ChatService reply into Discord messages: typing, queue position, streamed edits.

`LiveReply` (bots/streaming.py) decides when to edit and where to split; the sinks here only
know how to send and edit a Discord message. discord.py itself waits out 429s using the
`retry_after` Discord sends and then retries the same request, so an edit that hit a 429 still
lands with its text; a 429 discord.py gives up on becomes `SlowDown` for LiveReply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import discord

from bots.streaming import LiveReply, SlowDown
from core.errors import ChatError
from core.events import Delta, Done, Notice, Queued, Started
from core.service import ChatService

log = logging.getLogger(__name__)

DISCORD_LIMIT = 2000
NO_MENTIONS = discord.AllowedMentions.none()
INTERRUPTED = "*(interrupted: lorabot is shutting down)*"
TYPING_EVERY_S = 8.0  # Discord shows "typing…" for about 10 s per trigger


async def _request(call: Awaitable[Any]) -> Any:
    """Await one discord.py request; a 429 that discord.py did not absorb becomes `SlowDown`.

    A request that has started is allowed to finish even if the reply is cancelled meanwhile
    (shutdown): otherwise a message Discord already created would be unknown to LiveReply, which
    would then post the interrupted text as a second message. The cancellation is re-delivered at
    the reply's next await.
    """
    request = asyncio.ensure_future(call)
    try:
        return await _map_429(asyncio.shield(request))
    except asyncio.CancelledError:
        if request.cancelled():
            raise
        try:
            return await _map_429(request)
        finally:
            task = asyncio.current_task()
            if task is not None:
                task.cancel()


async def _map_429(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except discord.RateLimited as error:
        raise SlowDown(error.retry_after) from error
    except discord.HTTPException as error:
        if error.status == 429:
            retry_after = float(getattr(error.response, "headers", {}).get("Retry-After", 1.0))
            raise SlowDown(retry_after) from error
        raise


class ChannelSink:
    """Messages in `channel`; the first replies to `reply_to` (if given), continuations follow."""

    def __init__(self, channel: discord.abc.Messageable, reply_to: discord.Message | None = None) -> None:
        self.channel = channel
        self.reply_to = reply_to
        self.sent = 0

    async def send(self, text: str) -> discord.Message:
        if self.sent == 0 and self.reply_to is not None:
            sent = await _request(
                self.channel.send(
                    text,
                    reference=self.reply_to.to_reference(fail_if_not_exists=False),
                    mention_author=False,
                    allowed_mentions=NO_MENTIONS,
                )
            )
        else:
            sent = await _request(self.channel.send(text, allowed_mentions=NO_MENTIONS))
        self.sent += 1
        return sent

    async def edit(self, handle: discord.Message, text: str) -> None:
        await _request(handle.edit(content=text, allowed_mentions=NO_MENTIONS))


class InteractionSink:
    """The first message is the (deferred) interaction response; continuations are follow-ups."""

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction
        self.sent = 0

    async def send(self, text: str) -> discord.InteractionMessage | discord.WebhookMessage:
        if self.sent == 0:
            sent = await _request(
                self.interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
            )
        else:
            sent = await _request(
                self.interaction.followup.send(text, allowed_mentions=NO_MENTIONS, wait=True)
            )
        self.sent += 1
        return sent

    async def edit(self, handle: discord.InteractionMessage | discord.WebhookMessage, text: str) -> None:
        await _request(handle.edit(content=text, allowed_mentions=NO_MENTIONS))


@contextlib.asynccontextmanager
async def keep_typing(channel: discord.abc.Messageable | None) -> AsyncIterator[None]:
    """Show "lorabot is typing…" until the block ends; a failed trigger never breaks the reply."""

    async def loop() -> None:
        while True:
            try:
                await channel.typing()  # type: ignore[union-attr]
            except discord.HTTPException as error:
                log.debug("typing indicator failed: %s", error)
            await asyncio.sleep(TYPING_EVERY_S)

    task = asyncio.create_task(loop()) if channel is not None else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class _Interrupted(Exception):
    """The bot is shutting down and this reply's grace period is over."""


def _with_tail(written: str, tail: str) -> str:
    """What was written so far, then a note (error, interruption) below it."""
    return f"{written.rstrip()}\n\n{tail}" if written.strip() else tail


async def stream_reply(
    service: ChatService,
    sink: ChannelSink | InteractionSink,
    *,
    conversation_id: str,
    user_id: str,
    text: str,
    scope_id: str | None,
    edit_interval_s: float,
    typing_channel: discord.abc.Messageable | None = None,
    interrupt: asyncio.Event | None = None,
) -> str:
    """Stream the answer to `text` into `sink`; returns the text finally shown.

    Queue position shows as a status line, errors as the reply itself (never swallowed), and an
    interrupted reply (shutdown) keeps what was written and says so. Shutdown sets `interrupt`
    and cancels the task; the event is checked too because a cancel can be swallowed on the way
    (Python 3.11's `asyncio.wait_for` drops it when its inner future finished at the same time).
    """
    live = LiveReply(sink, limit=DISCORD_LIMIT, edit_interval_s=edit_interval_s)
    written = ""
    status_at = float("-inf")
    async with keep_typing(typing_channel):
        try:
            async with contextlib.aclosing(
                service.reply(conversation_id, user_id, text, scope_id=scope_id)
            ) as events:
                async for event in events:
                    if interrupt is not None and interrupt.is_set():
                        raise _Interrupted
                    match event:
                        case Queued(position=position):
                            # positions change for everyone at once: keep to the edit interval
                            now = time.monotonic()
                            if not live.handles or now - status_at >= edit_interval_s:
                                status_at = now
                                await live.status(f"⏳ queued, #{position}")
                        case Started():
                            if live.handles:  # a queue status is showing: say it's our turn now
                                await live.status("✍️ writing…")
                        case Notice(text=notice):
                            await sink.send(f"ℹ️ {notice}")
                        case Delta(text=piece):
                            written += piece
                            await live.update(written)
                        case Done(text=full, finish_reason=reason):
                            written = full
                            if reason == "interrupted":  # the service is stopping
                                written = _with_tail(full, INTERRUPTED)
            final = written
        except ChatError as error:
            final = _with_tail(written, f"⚠️ {error.user_message}")
        except discord.Forbidden:
            raise  # no permission to post here: nothing more we can show
        except (asyncio.CancelledError, _Interrupted) as stop:
            final = _with_tail(written, INTERRUPTED)
            if isinstance(stop, asyncio.CancelledError):
                await live.finish(final)
                raise
        except Exception:
            log.exception("reply failed in conversation %s", conversation_id)
            final = _with_tail(written, "⚠️ Something went wrong while answering.")
    await live.finish(final)
    return final
