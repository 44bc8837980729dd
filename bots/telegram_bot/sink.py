"""Telegram's sink for the shared delivery layer (bots/delivery.py), and the answer handler.

Replies are plain text (no parse_mode), so no model output can cause "can't parse entities".
Telegram counts its 4096-character limit in UTF-16 code units (an emoji is two). A final reply
carries the feedback keyboard (👍 👎 🔁, `reply_keyboard`) on its last message.

In private chats a reply streams as a draft (sendMessageDraft: an ephemeral ~30 s preview, no
message) until its final text is sent with sendMessage; a chat or topic where Telegram refuses
drafts gets messages and edits (`Drafts` in state.py remembers it).
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import logging
import re
import secrets
import warnings
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx
from telegram import (
    Bot,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    Message,
    ReplyParameters,
)
from telegram.constants import ChatAction, MessageLimit
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter
from telegram.ext import (
    ContextTypes,
)
from telegram.warnings import PTBDeprecationWarning

from bots.delivery import DraftsUnavailable, MaybeSent, MessageGone, SlowDown, TransientFailure
from bots.pacing import Pacer, Rule
from bots.replying import EditTiming, Notes, Outcome, Question, answer_question
from bots.telegram_bot.policy import conversation_id, defuse_mentions, scope_id, sender_key, thread_id
from bots.telegram_bot.state import Drafts, bot_state
from bots.text import utf16_len

if TYPE_CHECKING:
    from bots.delivery import ReplyButtons

log = logging.getLogger(__name__)

LIMIT = int(MessageLimit.MAX_TEXT_LENGTH)  # 4096 UTF-16 code units
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
INTERRUPTED = "[interrupted: lorabot is shutting down]"
RESTARTED = "[interrupted: lorabot restarted before this answer was finished — ask again]"
NOTES = Notes(interrupted=INTERRUPTED)
# A draft is a ~30 s preview (Bot API): one left unchanged this long is sent again before it lapses
DRAFT_REFRESH_S = 20.0
# callback_data of the feedback buttons: "fb:<action>:<turn id>" (stays under Telegram's 64 bytes)
FEEDBACK_DATA = re.compile(r"^fb:(up|down|again):(\d{1,19})$")


def reply_keyboard(buttons: ReplyButtons | None) -> InlineKeyboardMarkup | None:
    """One row under a final reply: 👍 👎 (rate) and 🔁 (regenerate), as far as enabled."""
    if buttons is None:
        return None
    row = []
    if buttons.rate:
        row += [_button("👍", "up", buttons.turn_id), _button("👎", "down", buttons.turn_id)]
    if buttons.regenerate:
        row.append(_button("🔁", "again", buttons.turn_id))
    return InlineKeyboardMarkup([row]) if row else None


def _button(emoji: str, action: str, turn_id: int) -> InlineKeyboardButton:
    return InlineKeyboardButton(emoji, callback_data=f"fb:{action}:{turn_id}")


def telegram_pacer() -> Pacer:
    """About 1 message/s in a private chat (bursts of 3), 20/min in a group, 30/s overall."""

    def per_chat(key: str) -> Rule:
        chat_id = int(key.rsplit(":", 1)[1])
        return Rule(3, 4.0) if chat_id > 0 else Rule(20, 65.0)

    # a margin under the limits: a call granted here reaches Telegram a little later, by a
    # delay that grows with the load on this process
    return Pacer(per_chat, Rule(27, 1.1))


T = TypeVar("T")


def retry_after_seconds(error: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


# -- sending ------------------------------------------------------------------------------------
class TelegramSink:
    """Messages in one chat (or forum topic); the first replies to the user's message."""

    limit = LIMIT
    draft_refresh_s = DRAFT_REFRESH_S

    def __init__(self, message: Message, *, reply: bool = True, drafts: Drafts | None = None) -> None:
        """`message`: the one answered (`reply`: the first message quotes it), or for 🔁 a
        message of the bot's reply, whose chat and topic the new answer goes to. `drafts`: stream
        the reply as a draft where allowed (private chats only: Telegram has them nowhere else)."""
        self.bot = message.get_bot()
        self.chat_id = message.chat_id
        self.thread_id = thread_id(message)
        self.reply_to: int | None = message.message_id if reply else None
        self.chat_key = f"telegram:{self.chat_id}"
        self.typing_key = f"telegram-typing:{self.chat_id}"  # chat actions are no messages
        self._drafts = drafts
        self._draft_where = f"{self.chat_id}:{self.thread_id or 0}"
        private = message.chat.type == Chat.PRIVATE
        self.drafts = drafts is not None and private and drafts.allowed(self._draft_where)
        self.draft_id = 1 + secrets.randbelow(2**31 - 2)  # non-zero; one per reply: its changes animate

    def length(self, text: str) -> int:
        return utf16_len(text)

    async def send(self, text: str, buttons: ReplyButtons | None = None) -> int:
        reply = ReplyParameters(self.reply_to, allow_sending_without_reply=True) if self.reply_to else None
        with _mapped(sending=True):
            sent = await self.bot.send_message(
                self.chat_id,
                text,
                message_thread_id=self.thread_id,
                reply_parameters=reply,
                link_preview_options=NO_PREVIEW,
                reply_markup=reply_keyboard(buttons),
            )
        self.reply_to = None  # continuation messages follow the first one
        return sent.message_id

    async def edit(self, handle: int, text: str, buttons: ReplyButtons | None = None) -> None:
        """Without `buttons` Telegram drops the keyboard the message had (none is sent)."""
        await edit_message(self.bot, self.chat_id, handle, text, reply_keyboard(buttons))

    async def delete(self, handle: int) -> None:
        with _mapped():
            await self.bot.delete_message(self.chat_id, handle)

    async def typing(self) -> None:
        with _mapped():
            await self.bot.send_chat_action(self.chat_id, ChatAction.TYPING, message_thread_id=self.thread_id)

    def ref(self, handle: int) -> str:
        return f"{self.chat_id}:{handle}"

    async def draft(self, text: str) -> None:
        """Show `text` as this reply's draft ("": Telegram's "Thinking…" placeholder). A 400
        refuses drafts in this chat or topic, a 404 (a Bot API server without the method)
        everywhere: `DraftsUnavailable`, and the reply goes on by messages."""
        try:
            with _mapped():
                await self.bot.send_message_draft(
                    self.chat_id, self.draft_id, text, message_thread_id=self.thread_id
                )
        except (BadRequest, InvalidToken) as error:  # PTB raises InvalidToken for any 404
            if self._drafts is not None:
                self._drafts.refuse(None if isinstance(error, InvalidToken) else self._draft_where)
            self.drafts = False
            raise DraftsUnavailable(error.message) from error

    def draft_ref(self) -> str:
        """Where the reply goes while only a draft shows it: `restart_note_target` reads it."""
        return f"{self.chat_id}:draft:{self.thread_id or 0}:{self.reply_to or 0}"


def restart_note_target(ref: str) -> tuple[int, int | None, int | None] | None:
    """(chat, topic, message replied to) of a `draft_ref`; None for a message's ref."""
    chat, _, rest = ref.partition(":")
    kind, _, place = rest.partition(":")
    if kind != "draft":
        return None
    thread, _, reply_to = place.partition(":")
    return int(chat), int(thread) or None, int(reply_to) or None


async def edit_message(
    bot: Bot, chat_id: int, message_id: int, text: str, keyboard: InlineKeyboardMarkup | None = None
) -> None:
    with _mapped():
        try:
            await bot.edit_message_text(
                text, chat_id, message_id, link_preview_options=NO_PREVIEW, reply_markup=keyboard
            )
        except BadRequest as error:
            if "not modified" not in error.message.lower():
                raise


class _mapped:
    """Telegram's failures as the delivery layer knows them.

    `sending`: a new message. Telegram has no nonce, so a send that failed after the request went
    out (read timeout, connection dropped before the answer) may have been posted: that is
    `MaybeSent`, never resent. Only a failure before the request left (no connection, pool
    timeout) or Telegram's own 5xx answer is worth sending again."""

    def __init__(self, *, sending: bool = False) -> None:
        self.sending = sending

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> Literal[False]:
        if error is None:
            return False
        if isinstance(error, RetryAfter):
            raise SlowDown(retry_after_seconds(error)) from error
        if isinstance(error, BadRequest):
            if any(
                gone in error.message.lower()
                for gone in ("message to edit not found", "message to delete not found")
            ):
                raise MessageGone(error.message) from error
            return False
        if isinstance(error, NetworkError):  # timeouts, 5xx, dropped connections
            if self.sending and _may_have_arrived(error):
                raise MaybeSent(error.message) from error
            raise TransientFailure(error.message) from error
        return False


def _may_have_arrived(error: NetworkError) -> bool:
    """Whether Telegram may have received the request: everything but a failure to connect (PTB
    keeps httpx's error as the cause; a 5xx answer has none: Telegram said it failed)."""
    cause = error.__cause__
    if cause is None:
        return False
    return not isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


async def waiting_out_flood_control(call: Callable[[], Awaitable[T]], attempts: int = 4) -> T:
    """`call()`, again after each 429's retry_after (the rate limiter does not retry), up to
    `attempts` times: for a command's own short messages and edits, outside a reply's delivery."""
    for attempt in range(attempts):
        try:
            return await call()
        except RetryAfter as error:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(retry_after_seconds(error))
    raise AssertionError("unreachable")


async def say(message: Message, text: str, **kwargs: Any) -> Message:
    """Reply with a short plain-text message of ours, waiting out flood control."""
    reply = ReplyParameters(message.message_id, allow_sending_without_reply=True)
    return await waiting_out_flood_control(
        lambda: message.reply_text(text, reply_parameters=reply, link_preview_options=NO_PREVIEW, **kwargs)
    )


async def answer_message(message: Message, context: ContextTypes.DEFAULT_TYPE, text: str) -> None:
    """Stream the model's answer to `text` into replies to `message`."""
    question = Question(
        conversation_id=conversation_id(message),
        user_id=sender_key(message),
        text=text,
        scope_id=scope_id(message.chat),
        platform="telegram",
    )
    sink = TelegramSink(message, drafts=bot_state(context).drafts)
    await deliver_answer(context, sink, message.chat, question)


async def deliver_answer(
    context: ContextTypes.DEFAULT_TYPE,
    sink: TelegramSink,
    chat: Chat,
    question: Question,
    *,
    existing: list[tuple[Any, str]] | None = None,
    on_accepted: Callable[[], Awaitable[None]] | None = None,
) -> Outcome:
    """Every answer (a message's, or 🔁's into `existing` messages) takes this path: tracked for
    shutdown, paced with the others, mentions defused in groups."""
    state = bot_state(context)
    settings = state.settings
    private = chat.type == Chat.PRIVATE
    pace = EditTiming(
        edit_interval_s=settings.edit_interval_s if private else settings.group_edit_interval_s,
        typing_interval_s=settings.typing_interval_s,
    )
    async with state.inflight.track():
        return await answer_question(
            state.service,
            sink,
            state.pacer,
            question,
            pace=pace,
            notes=NOTES,
            clean=(lambda reply: reply) if private else defuse_mentions,
            interrupt=state.inflight.interrupt,
            existing=existing,
            on_accepted=on_accepted,
        )
