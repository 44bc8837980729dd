"""Sending replies: a LiveReply sink over PTB (429 → SlowDown), typing, and the answer flow.

Replies are plain text (no parse_mode), so no model output can cause "can't parse entities"."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import logging
import warnings

from telegram import (
    Chat,
    LinkPreviewOptions,
    Message,
    ReplyParameters,
)
from telegram.constants import ChatAction, MessageLimit
from telegram.error import BadRequest, RetryAfter, TelegramError
from telegram.ext import (
    ContextTypes,
)
from telegram.warnings import PTBDeprecationWarning

from bots.streaming import LiveReply, SlowDown
from bots.telegram_bot.policy import conversation_id, defuse_mentions, scope_id, thread_id
from bots.telegram_bot.state import bot_state
from core.errors import ChatError
from core.events import Delta, Done, Notice, Queued, ReplyEvent

log = logging.getLogger(__name__)

LIMIT = MessageLimit.MAX_TEXT_LENGTH  # 4096
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
INTERRUPTED = "[interrupted: lorabot is shutting down]"


def _unchanged(text: str) -> str:
    """Private chats need no mention defusing: nobody else is there to notify."""
    return text


def retry_after_seconds(error: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


# -- sending ------------------------------------------------------------------------------------
class TelegramSink:
    """`MessageSink` over PTB: the first message replies to the user's; 429 becomes SlowDown."""

    def __init__(self, message: Message) -> None:
        self.bot = message.get_bot()
        self.chat_id = message.chat_id
        self.thread_id = thread_id(message)
        self.reply_to: int | None = message.message_id

    async def send(self, text: str) -> int:
        reply = ReplyParameters(self.reply_to, allow_sending_without_reply=True) if self.reply_to else None
        try:
            sent = await self.bot.send_message(
                self.chat_id,
                text,
                message_thread_id=self.thread_id,
                reply_parameters=reply,
                link_preview_options=NO_PREVIEW,
            )
        except RetryAfter as error:
            raise SlowDown(retry_after_seconds(error)) from error
        self.reply_to = None  # continuation messages follow the first one
        return sent.message_id

    async def edit(self, handle: int, text: str) -> None:
        try:
            await self.bot.edit_message_text(text, self.chat_id, handle, link_preview_options=NO_PREVIEW)
        except RetryAfter as error:
            raise SlowDown(retry_after_seconds(error)) from error
        except BadRequest as error:
            if "not modified" not in error.message.lower():
                raise


async def say(message: Message, text: str, **kwargs) -> Message:
    """Reply with a short plain-text message of ours, waiting out flood control."""
    reply = ReplyParameters(message.message_id, allow_sending_without_reply=True)
    for attempt in range(4):
        try:
            return await message.reply_text(
                text, reply_parameters=reply, link_preview_options=NO_PREVIEW, **kwargs
            )
        except RetryAfter as error:
            if attempt == 3:
                raise
            await asyncio.sleep(retry_after_seconds(error))
    raise AssertionError("unreachable")


async def _keep_typing(message: Message, every_s: float) -> None:
    """Renew the 'typing…' indicator (it fades after ~5 s) until cancelled."""
    while True:
        with contextlib.suppress(TelegramError):
            await message.get_bot().send_chat_action(
                message.chat_id, ChatAction.TYPING, message_thread_id=thread_id(message)
            )
        await asyncio.sleep(every_s)


def _with_note(text: str, note: str) -> str:
    """The partial answer (if any) followed by why it stopped."""
    return f"{text.rstrip()}\n\n{note}" if text.strip() else note


class ReplyView:
    """One answer on screen: a queue status, then the growing text, then the final text or why it stopped."""

    def __init__(self, message: Message, live: LiveReply, clean=_unchanged) -> None:
        self.message = message
        self.live = live
        self.clean = clean  # defuse_mentions in groups
        self.shown = ""
        self.complete = False  # the final text is on screen; a late cancel must not mark it interrupted
        self._last_status = float("-inf")

    async def show(self, event: ReplyEvent) -> None:
        match event:
            case Queued(position=position):
                now = asyncio.get_running_loop().time()
                if now - self._last_status >= self.live.edit_interval_s:  # positions change often
                    self._last_status = now
                    await self.live.status(f"⏳ Waiting in line: #{position}")
            case Notice(text=note):
                await say(self.message, f"ℹ️ {note}")
            case Delta(text=piece):
                self.shown += piece
                await self.live.update(self.clean(self.shown))
            case Done(text=full, finish_reason=reason):
                final = self.clean(full)
                await self.live.finish(_with_note(final, INTERRUPTED) if reason == "interrupted" else final)
                self.complete = True

    async def stop(self, note: str) -> None:
        """End the reply early: keep what was written and say why it stopped."""
        await self.live.finish(_with_note(self.clean(self.shown), note))


async def answer(message: Message, context: ContextTypes.DEFAULT_TYPE, text: str) -> None:
    """Stream the model's answer to `text` into replies to `message`."""
    state = bot_state(context)
    settings = state.settings
    private = message.chat.type == Chat.PRIVATE
    view = ReplyView(
        message,
        LiveReply(
            TelegramSink(message),
            limit=LIMIT,
            edit_interval_s=settings.edit_interval_s if private else settings.group_edit_interval_s,
        ),
        clean=_unchanged if private else defuse_mentions,
    )
    user = message.from_user.id if message.from_user else message.chat_id
    typing = asyncio.create_task(_keep_typing(message, settings.typing_interval_s))
    task = asyncio.current_task()
    if task is not None:
        state.replies.add(task)
    events = state.service.reply(
        conversation_id(message), f"telegram:{user}", text, scope_id=scope_id(message.chat)
    )
    try:
        # aclosing: leaving early (error, shutdown) frees the queue slot / stops generation at once
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, Done):
                    typing.cancel()
                await view.show(event)
    except ChatError as error:
        typing.cancel()
        await view.stop(f"⚠️ {error.user_message}")
    except asyncio.CancelledError:
        # Shutting down (or the update was cancelled): leave no half reply without a marker.
        typing.cancel()
        if not view.complete:
            with contextlib.suppress(Exception):
                await asyncio.shield(view.stop(INTERRUPTED))
        raise
    except Exception:
        log.exception("Reply in chat %s failed", message.chat_id)
        typing.cancel()
        with contextlib.suppress(Exception):
            await view.stop("⚠️ Sorry, something went wrong while answering.")
    finally:
        typing.cancel()
        if task is not None:
            state.replies.discard(task)
