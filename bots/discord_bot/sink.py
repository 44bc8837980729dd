"""Discord's sinks for the shared delivery layer (bots/delivery.py): send, edit, typing, limits.

Every request runs as a task of its own that a cancelled reply never interrupts. discord.py
keeps shared state while a request waits out a 429 (a *global* 429 closes a process-wide gate
until its sleep ends); cancelling that sleep left the gate shut for good, and every later call
of the bot waited forever. That was the "stall under load" of issue 9.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
import discord

from bots.delivery import MessageGone, ReplyButtons, SlowDown, TransientFailure
from bots.discord_bot.feedback import reply_view
from bots.pacing import Pacer, Rule
from bots.replying import Notes

log = logging.getLogger(__name__)

T = TypeVar("T")
DISCORD_LIMIT = 2000
NO_MENTIONS = discord.AllowedMentions.none()
INTERRUPTED = "*(interrupted: lorabot is shutting down)*"
RESTARTED = "*(interrupted: lorabot restarted before this answer was finished — ask again)*"
NOTES = Notes(interrupted=INTERRUPTED, failed="⚠️ Something went wrong while answering.")
UNKNOWN_MESSAGE = 10008
_requests: set[asyncio.Task[Any]] = set()  # requests in flight, kept alive past a cancelled reply


class ShownButtons:
    """Which of a sink's messages carry the 👍 👎 🔁 buttons, and the `view` keyword for a request:
    a view when buttons go on, None to take them off an edited message that had them, nothing
    (no change, no extra payload) otherwise."""

    def __init__(self, on: set[int] | None = None) -> None:
        self.on: set[int] = set(on or ())  # message ids

    def for_send(self, buttons: ReplyButtons | None) -> dict[str, Any]:
        return {"view": reply_view(buttons)} if buttons is not None else {}

    def for_edit(self, message_id: int, buttons: ReplyButtons | None) -> dict[str, Any]:
        if buttons is not None:
            return {"view": reply_view(buttons)}
        return {"view": None} if message_id in self.on else {}

    def shown(self, message_id: int, buttons: ReplyButtons | None) -> None:
        """After a request succeeded: `message_id` now shows `buttons` (or none)."""
        (self.on.add if buttons is not None else self.on.discard)(message_id)

    async def edit(self, handle: Any, text: str, buttons: ReplyButtons | None) -> None:
        """Edit a sink's message (any discord.py message kind) to `text` and `buttons`."""
        view = self.for_edit(handle.id, buttons)
        await request(handle.edit(content=text, allowed_mentions=NO_MENTIONS, **view))
        self.shown(handle.id, buttons)

    async def delete(self, handle: Any) -> None:
        await request(handle.delete())
        self.shown(handle.id, None)


def discord_pacer() -> Pacer:
    """5 messages per 5 s in a channel, 50 requests/s overall (a margin below both)."""
    return Pacer(lambda channel: Rule(5, 5.5), Rule(45, 1.0))


async def request(call: Awaitable[T]) -> T:
    """Await one discord.py request with Discord's failures mapped for the delivery layer."""
    task = asyncio.ensure_future(_mapped(call))
    _requests.add(task)
    task.add_done_callback(_settled)
    return await asyncio.shield(task)


def _settled(task: asyncio.Task[Any]) -> None:
    _requests.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.debug("a Discord request failed after its reply stopped waiting: %s", task.exception())


async def _mapped(call: Awaitable[T]) -> T:
    try:
        return await call
    except discord.RateLimited as error:  # over discord.py's max_ratelimit_timeout
        raise SlowDown(error.retry_after) from error
    except discord.NotFound as error:
        if error.code == UNKNOWN_MESSAGE:
            raise MessageGone(str(error)) from error
        raise
    except discord.DiscordServerError as error:
        raise TransientFailure(str(error)) from error
    except discord.HTTPException as error:
        if error.status == 429:
            raise SlowDown(float(error.response.headers.get("Retry-After", 1.0))) from error
        raise
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as error:
        raise TransientFailure(str(error) or type(error).__name__) from error


class ChannelSink:
    """Messages in `channel`; the first replies to `reply_to` (if given), continuations follow."""

    limit = DISCORD_LIMIT

    def __init__(
        self,
        channel: discord.abc.Messageable,
        reply_to: discord.Message | None = None,
        *,
        with_buttons: set[int] | None = None,
    ) -> None:
        self.channel = channel
        self.reply_to = reply_to
        self.buttons = ShownButtons(with_buttons)  # `with_buttons`: messages (ids) it edits that have them
        self.chat_key = f"discord:{getattr(channel, 'id', 0)}"
        self.typing_key = f"discord-typing:{getattr(channel, 'id', 0)}"
        self.sent = 0
        self._nonce: int | None = None  # of a send whose answer never came

    def length(self, text: str) -> int:
        return len(text)

    async def send(self, text: str, *, buttons: ReplyButtons | None = None) -> discord.Message:
        # A send that failed (timeout, dropped connection, 5xx) may still have been posted: the next
        # send reuses its nonce, and with enforce_nonce Discord answers with that message instead of
        # posting a second one. A new nonce only once the message is ours, showing `text`: until
        # then the caller has no handle for it, and only the nonce finds it again.
        if self._nonce is None:
            self._nonce = secrets.randbelow(10**18)
        if self.sent == 0 and self.reply_to is not None:
            reference = self.reply_to.to_reference(fail_if_not_exists=False)
            sent = await request(
                self.channel.send(
                    text,
                    reference=reference,
                    mention_author=False,
                    allowed_mentions=NO_MENTIONS,
                    nonce=self._nonce,
                    **self.buttons.for_send(buttons),
                )
            )
        else:
            sent = await request(
                self.channel.send(
                    text, allowed_mentions=NO_MENTIONS, nonce=self._nonce, **self.buttons.for_send(buttons)
                )
            )
        if sent.components:
            self.buttons.on.add(sent.id)
        if sent.content != text or (buttons is not None) != bool(sent.components):
            # the earlier attempt's message, with the text (and buttons) of then
            try:
                await self.edit(sent, text, buttons=buttons)
            except MessageGone:  # deleted meanwhile: nothing of it on screen, post the text anew
                self._nonce = None
                return await self.send(text, buttons=buttons)  # a fresh nonce posts `text` itself
        self._nonce = None
        self.sent += 1
        return sent

    async def edit(
        self,
        handle: discord.Message | discord.PartialMessage,
        text: str,
        *,
        buttons: ReplyButtons | None = None,
    ) -> None:
        await self.buttons.edit(handle, text, buttons)

    async def delete(self, handle: discord.Message | discord.PartialMessage) -> None:
        await self.buttons.delete(handle)

    async def typing(self) -> None:
        await request(_trigger_typing(self.channel))

    def ref(self, handle: discord.Message | discord.PartialMessage) -> str:
        return f"{handle.channel.id}:{handle.id}"


class ThreadSink:
    """DISCORD_REPLY_IN_THREAD: inline (a reply to `message`) until `open()`, which starts a thread
    from the message; later messages go there. Called once the question is accepted, so a refused
    one is answered inline and starts no thread. Without the permission it stays inline."""

    limit = DISCORD_LIMIT

    def __init__(self, message: discord.Message, name: str) -> None:
        self.message = message
        self.name = name
        self.target = ChannelSink(message.channel, message)
        self.chat_key = self.target.chat_key  # the parent's budget: conservative for the thread too
        self.typing_key = self.target.typing_key

    async def open(self) -> None:
        try:
            thread = await request(self.message.create_thread(name=self.name))
        except (discord.HTTPException, SlowDown, TransientFailure) as error:  # e.g. no Create Public Threads
            log.warning("could not start a thread, answering inline: %s", error)
        else:
            self.target = ChannelSink(thread)  # the thread hangs off the user's message already

    def length(self, text: str) -> int:
        return len(text)

    async def send(self, text: str, *, buttons: ReplyButtons | None = None) -> discord.Message:
        return await self.target.send(text, buttons=buttons)

    async def edit(self, handle: discord.Message, text: str, *, buttons: ReplyButtons | None = None) -> None:
        await self.target.edit(handle, text, buttons=buttons)

    async def delete(self, handle: discord.Message) -> None:
        await self.target.delete(handle)

    async def typing(self) -> None:
        await self.target.typing()

    def ref(self, handle: discord.Message) -> str:
        return self.target.ref(handle)


async def _trigger_typing(channel: discord.abc.Messageable) -> None:
    await channel.typing()  # one POST /typing; Discord shows it for ~10 s


class InteractionSink:
    """The first message is the (deferred) interaction response; continuations are follow-ups."""

    limit = DISCORD_LIMIT

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction
        self.chat_key = f"discord:{interaction.channel_id or 0}"
        self.typing_key = f"discord-typing:{interaction.channel_id or 0}"
        self.name = interaction.command.name if interaction.command else "command"
        self.sent = 0
        self.original_gone = False  # the deferred response was deleted: only follow-ups are left
        self.buttons = ShownButtons()

    def length(self, text: str) -> int:
        return len(text)

    async def send(
        self, text: str, *, buttons: ReplyButtons | None = None
    ) -> discord.InteractionMessage | discord.WebhookMessage:
        sent = await self._send(text, self.buttons.for_send(buttons))
        self.buttons.shown(sent.id, buttons)
        return sent

    async def _send(
        self, text: str, view: dict[str, Any]
    ) -> discord.InteractionMessage | discord.WebhookMessage:
        if self.sent == 0 and not self.original_gone:
            try:
                sent: discord.InteractionMessage | discord.WebhookMessage = await request(
                    self.interaction.edit_original_response(
                        content=text, allowed_mentions=NO_MENTIONS, **view
                    )
                )
            except MessageGone:
                # The "thinking…" response was deleted: editing it answers 10008 forever. The
                # interaction's token still takes follow-ups (for 15 minutes): post the text as one.
                log.info(
                    "the response to /%s in %s was deleted; answering in a follow-up",
                    self.name,
                    self.chat_key,
                )
                self.original_gone = True
            else:
                self.sent += 1
                return sent
        sent = await request(
            self.interaction.followup.send(text, allowed_mentions=NO_MENTIONS, wait=True, **view)
        )
        self.sent += 1
        return sent

    async def edit(
        self,
        handle: discord.InteractionMessage | discord.WebhookMessage,
        text: str,
        *,
        buttons: ReplyButtons | None = None,
    ) -> None:
        await self.buttons.edit(handle, text, buttons)

    async def delete(self, handle: discord.InteractionMessage | discord.WebhookMessage) -> None:
        await self.buttons.delete(handle)

    async def typing(self) -> None:
        """Discord already shows "lorabot is thinking…" for a deferred interaction."""

    def ref(self, handle: discord.Message) -> str:
        return f"{handle.channel.id}:{handle.id}"
