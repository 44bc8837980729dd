"""Telegram adapter: python-telegram-bot handlers in front of `core.service.ChatService`.

Thin on purpose: decide whether the bot is addressed, check access, map the update to
`(conversation_id, user_id, text)`, and render the service's events with `bots.streaming.LiveReply`.
Replies are sent as plain text (no parse_mode), so no model output can cause "can't parse entities".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import logging
import re
import secrets
import warnings
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from telegram import (
    BotCommand,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    Message,
    MessageEntity,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatAction, ChatMemberStatus, MessageLimit
from telegram.error import BadRequest, InvalidToken, RetryAfter, TelegramError
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)
from telegram.warnings import PTBDeprecationWarning

from bots.streaming import LiveReply, SlowDown
from bots.telegram_bot.settings import SettingsError, TelegramSettings
from core.errors import ChatError
from core.events import Delta, Done, Notice, Queued, ReplyEvent
from core.service import ChatService

log = logging.getLogger(__name__)

LIMIT = MessageLimit.MAX_TEXT_LENGTH  # 4096
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
MODEL_PREFIX = "model:"
INTERRUPTED = "[interrupted: lorabot is shutting down]"
COMMANDS = [
    BotCommand("start", "Say hello and show what I can do"),
    BotCommand("help", "How to talk to me"),
    BotCommand("ask", "Ask a question: /ask your question"),
    BotCommand("model", "Choose the model for this chat"),
    BotCommand("reset", "Forget this conversation"),
    BotCommand("stats", "Queue, speed and loaded models"),
]
HELP = (
    "I'm lorabot, a small language model running on a CPU.\n\n"
    "In a private chat just write to me. In a group, mention me (@{username}), reply to one of my "
    "messages, or use /ask <question>.\n\n"
    "/model – choose the model for this chat (in groups: admins only)\n"
    "/reset – forget this conversation\n"
    "/stats – queue, speed and loaded models\n\n"
    "Model here: {model}"
)


@dataclass
class BotState:
    """What the handlers share, kept in `application.bot_data`."""

    service: ChatService
    settings: TelegramSettings
    replies: set[asyncio.Task] = field(default_factory=set)


def _state(context: ContextTypes.DEFAULT_TYPE) -> BotState:
    return context.bot_data["lorabot"]


# -- mapping updates to the core -------------------------------------------------------------
def conversation_id(message: Message) -> str:
    """Private chat: the chat. Group: the whole chat, or the forum topic it was written in."""
    if message.is_topic_message and message.message_thread_id:
        return f"telegram:{message.chat_id}:topic:{message.message_thread_id}"
    return f"telegram:{message.chat_id}"


def scope_id(chat: Chat) -> str:
    """The model choice (/model) belongs to the chat, shared by its topics."""
    return f"telegram:{chat.id}"


def _thread_id(message: Message) -> int | None:
    return message.message_thread_id if message.is_topic_message else None


_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.DOTALL)
_MENTION = re.compile(r"(?<![\w@])@(?=[A-Za-z0-9_]{3})")


def defuse_mentions(text: str) -> str:
    """Put a WORD JOINER after a mention-like '@' so model output never notifies a group member.

    Code (``` fences, `inline`) is left alone so decorators like @dataclass stay copyable; emails
    (word@host) are no mentions. Private chats don't need this: nobody else is there to notify.
    """
    parts, last = [], 0
    for code in _CODE.finditer(text):
        parts += [_MENTION.sub("@\u2060", text[last : code.start()]), code.group()]
        last = code.end()
    parts.append(_MENTION.sub("@\u2060", text[last:]))
    return "".join(parts)


def _unchanged(text: str) -> str:
    return text


def retry_after_seconds(error: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def addressed_text(message: Message, bot_username: str, bot_id: int) -> str | None:
    """The question if the bot is addressed in a group (mention or reply to it), else None."""
    text = message.text or ""
    mentioned = False
    for entity, value in message.parse_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION]).items():
        if (entity.type == MessageEntity.MENTION and value[1:].lower() == bot_username.lower()) or (
            entity.type == MessageEntity.TEXT_MENTION and entity.user and entity.user.id == bot_id
        ):
            mentioned = True
            if entity.type == MessageEntity.MENTION:
                text = text.replace(value, " ", 1)
    replied = message.reply_to_message
    replied_to_bot = (
        replied is not None
        and replied.from_user is not None
        and replied.from_user.id == bot_id
        # in forums every message "replies" to the topic's first message
        and not (message.is_topic_message and replied.message_id == message.message_thread_id)
    )
    if not (mentioned or replied_to_bot):
        return None
    return " ".join(text.split())


# -- sending ------------------------------------------------------------------------------------
class TelegramSink:
    """`MessageSink` over PTB: the first message replies to the user's; 429 becomes SlowDown."""

    def __init__(self, message: Message) -> None:
        self.bot = message.get_bot()
        self.chat_id = message.chat_id
        self.thread_id = _thread_id(message)
        self.reply_to: int | None = message.message_id

    async def send(self, text: str) -> int:
        reply = ReplyParameters(self.reply_to, allow_sending_without_reply=True) if self.reply_to else None
        try:
            sent = await self.bot.send_message(
                self.chat_id, text, message_thread_id=self.thread_id,
                reply_parameters=reply, link_preview_options=NO_PREVIEW,
            )
        except RetryAfter as error:
            raise SlowDown(retry_after_seconds(error)) from error
        self.reply_to = None  # continuation messages follow the first one
        return sent.message_id

    async def edit(self, handle: int, text: str) -> None:
        try:
            await self.bot.edit_message_text(
                text, self.chat_id, handle, link_preview_options=NO_PREVIEW
            )
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
                message.chat_id, ChatAction.TYPING, message_thread_id=_thread_id(message)
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
    state = _state(context)
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


# -- handlers -----------------------------------------------------------------------------------
async def check_access(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Runs before every handler: drop updates from users/chats outside the allow lists."""
    user = update.effective_user
    chat = update.effective_chat
    if _state(context).settings.is_allowed(user.id if user else None, chat.id if chat else None):
        return
    log.info("Ignored update from user %s in chat %s (not in allow lists)", user and user.id, chat and chat.id)
    if update.callback_query:
        await update.callback_query.answer("You are not allowed to use this bot here.", show_alert=True)
    elif chat is not None and chat.type == Chat.PRIVATE and update.effective_message:
        await say(update.effective_message, "Sorry, this bot is private.")
    raise ApplicationHandlerStop


async def on_private_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Private chat: every text message is a question."""
    await answer(update.effective_message, context, update.effective_message.text)


async def on_group_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Group: answer only when mentioned or replied to."""
    message = update.effective_message
    text = addressed_text(message, context.bot.username, context.bot.id)
    if text is None:
        return
    if not text:
        await say(message, "Yes? Ask me something after the mention.")
        return
    await answer(message, context, text)


async def cmd_ask(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/ask question`, or `/ask` in reply to a message: that message's text is the question."""
    message = update.effective_message
    question = " ".join(context.args or [])
    if not question and message.reply_to_message and not (
        message.is_topic_message and message.reply_to_message.message_id == message.message_thread_id
    ):
        question = message.reply_to_message.text or message.reply_to_message.caption or ""
    if not question:
        await say(message, "Usage: /ask <your question> (or reply /ask to a message)")
        return
    await answer(message, context, question)


async def cmd_help(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    service = _state(context).service
    message = update.effective_message
    model = await service.current_model(conversation_id(message), scope_id(message.chat))
    await say(message, HELP.format(username=context.bot.username, model=model))


def _model_keyboard(names: list[str], current: str) -> InlineKeyboardMarkup:
    buttons = []
    for index, name in enumerate(names):
        data = MODEL_PREFIX + name
        if len(data.encode()) > 64:  # Telegram's callback_data limit
            data = f"{MODEL_PREFIX}#{index}"
        buttons.append([InlineKeyboardButton(("✅ " if name == current else "") + name, callback_data=data)])
    return InlineKeyboardMarkup(buttons)


async def cmd_model(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show the registered models as buttons; pressing one sets this chat's model."""
    service = _state(context).service
    message = update.effective_message
    current = await service.current_model(conversation_id(message), scope_id(message.chat))
    lines = [f"Model here: {current}", ""]
    lines += [f"• {entry.name}" + (f" – {entry.description}" if entry.description else "") for entry in service.models()]
    if message.chat.type != Chat.PRIVATE:
        lines += ["", "Only chat admins can change it."]
    await say(message, "\n".join(lines), reply_markup=_model_keyboard(service.model_names(), current))


async def may_change_model(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """Private chats: the user. Groups: chat administrators and configured admins."""
    user, chat = update.effective_user, update.effective_chat
    if chat.type == Chat.PRIVATE or user.id in _state(context).settings.admin_ids:
        return True
    member = await context.bot.get_chat_member(chat.id, user.id)
    return member.status in (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)


async def on_model_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    service = _state(context).service
    if not await may_change_model(update, context):
        await query.answer("Only chat admins can change the model here.", show_alert=True)
        return
    choice = query.data.removeprefix(MODEL_PREFIX)
    names = service.model_names()
    if choice.startswith("#") and choice[1:].isdigit() and int(choice[1:]) < len(names):
        choice = names[int(choice[1:])]
    try:
        await service.set_scope_default(scope_id(update.effective_chat), choice)
    except ChatError as error:
        await query.answer(error.user_message[:200], show_alert=True)
        return
    await query.answer(f"Model set to {choice}")
    with contextlib.suppress(BadRequest):  # e.g. the keyboard message is too old to edit
        await query.edit_message_text(
            f"Model here: {choice} (set by {query.from_user.full_name})",
            reply_markup=_model_keyboard(names, choice),
        )


async def cmd_reset(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    removed = await _state(context).service.reset(conversation_id(update.effective_message))
    await say(update.effective_message, f"🧹 Forgot this conversation ({removed} messages).")


async def cmd_stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    service = _state(context).service
    stats = service.stats()
    message = update.effective_message
    model = await service.current_model(conversation_id(message), scope_id(message.chat))
    speed = f"{stats.tokens_per_s:.1f} tokens/s" if stats.tokens_per_s else "n/a yet"
    await say(
        message,
        f"Model here: {model}\n"
        f"Queue: {stats.running} running, {stats.queue_depth} waiting\n"
        f"Loaded models: {', '.join(stats.loaded_models) or 'none'}\n"
        f"Speed (recent replies): {speed}\n"
        f"Replies since start: {stats.replies}",
    )


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log handler errors and tell the user instead of staying silent."""
    log.error("Telegram handler failed: %r", context.error, exc_info=context.error)
    if isinstance(update, Update) and update.effective_message and not update.callback_query:
        with contextlib.suppress(TelegramError):
            await say(update.effective_message, "⚠️ Sorry, something went wrong.")
    elif isinstance(update, Update) and update.callback_query:
        with contextlib.suppress(TelegramError):
            await update.callback_query.answer("Sorry, something went wrong.", show_alert=True)


# -- application ---------------------------------------------------------------------------------
def build_application(service: ChatService, settings: TelegramSettings) -> Application:
    """The PTB Application with lorabot's handlers (no network traffic yet)."""
    if settings.token is None:
        raise SettingsError("TELEGRAM_TOKEN is not set (get one from @BotFather).")
    app = (
        Application.builder()
        .token(settings.token.get_secret_value())
        .base_url(settings.api_base_url)
        .base_file_url(settings.file_base_url)
        .concurrent_updates(True)  # 20 chats at once must not wait for each other
        .build()
    )
    app.bot_data["lorabot"] = BotState(service, settings)
    private = filters.ChatType.PRIVATE
    groups = filters.ChatType.GROUPS
    app.add_handler(TypeHandler(Update, check_access), group=-1)
    app.add_handler(CommandHandler(["start", "help"], cmd_help))
    app.add_handler(CommandHandler("ask", cmd_ask))
    app.add_handler(CommandHandler("model", cmd_model))
    app.add_handler(CommandHandler("reset", cmd_reset))
    app.add_handler(CommandHandler("stats", cmd_stats))
    app.add_handler(CallbackQueryHandler(on_model_button, pattern=f"^{MODEL_PREFIX}"))
    text = filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND
    app.add_handler(MessageHandler(text & private, on_private_text))
    app.add_handler(MessageHandler(text & groups, on_group_text))
    app.add_error_handler(on_error)
    return app


class _RedactToken(logging.Filter):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg, record.args = message.replace(self.token, "<token>"), ()
        return True


async def run_telegram(service: ChatService, settings: TelegramSettings) -> None:
    """Receive updates (long polling or webhook) until cancelled; then stop and mark unfinished replies."""
    if settings.token is None:
        raise SettingsError("TELEGRAM_TOKEN is not set (get one from @BotFather).")
    # httpx logs every request URL at INFO and PTB the base URL at DEBUG; both contain the token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    redactor = _RedactToken(settings.token.get_secret_value())
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(redactor)
    try:
        app = build_application(service, settings)
        try:
            await app.initialize()  # getMe: checks the token
        except InvalidToken:  # its message quotes the token: don't pass it on
            raise SettingsError(
                f"TELEGRAM_TOKEN was rejected by the Bot API at {settings.api_base_url} "
                "(check the token from @BotFather)."
            ) from None
        try:
            with contextlib.suppress(TelegramError):
                await app.bot.set_my_commands(COMMANDS)
            await _start_updates(app, settings)
            await app.start()
            await asyncio.Future()  # until cancelled
        finally:
            await _stop(app)
            await app.shutdown()
    finally:
        for handler in handlers:
            handler.removeFilter(redactor)


async def _start_updates(app: Application, settings: TelegramSettings) -> None:
    """Long polling by default; a webhook server when TELEGRAM_WEBHOOK_URL is set."""
    updates = [Update.MESSAGE, Update.CALLBACK_QUERY]
    if settings.webhook_url is None:
        await app.updater.start_polling(
            timeout=dtm.timedelta(seconds=settings.poll_timeout_s),
            allowed_updates=updates,
            drop_pending_updates=settings.drop_pending_updates,
        )
        log.info("Telegram bot @%s is running (long polling)", app.bot.username)
        return
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else secrets.token_urlsafe(32)
    await app.updater.start_webhook(
        listen=settings.webhook_listen,
        port=settings.webhook_port,
        url_path=urlsplit(settings.webhook_url).path.lstrip("/"),
        webhook_url=settings.webhook_url,
        secret_token=secret,
        allowed_updates=updates,
        drop_pending_updates=settings.drop_pending_updates,
    )
    log.info(
        "Telegram bot @%s is running (webhook %s, listening on %s:%s)",
        app.bot.username, settings.webhook_url, settings.webhook_listen, settings.webhook_port,
    )


async def _stop(app: Application) -> None:
    """Stop fetching, interrupt the replies in flight (they mark themselves), stop PTB."""
    if app.updater and app.updater.running:
        await app.updater.stop()
    replies = list(app.bot_data["lorabot"].replies)
    for task in replies:
        task.cancel()
    if replies:
        await asyncio.wait(replies, timeout=10)
    if app.running:
        await app.stop()
    log.info("Telegram bot stopped")
