"""Telegram adapter: the PTB Application and its life cycle (polling or webhook, clean shutdown).

Thin on purpose: `policy` decides whether the bot is addressed and maps updates to the core's
`(conversation_id, user_id, text)`, `handlers` answers commands and messages, `replies` renders the
service's events through the shared delivery layer (`bots.replying`, `bots.delivery`) as plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import logging
import re
import secrets
from urllib.parse import urlsplit

from telegram import ReplyParameters, Update
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    MessageReactionHandler,
    TypeHandler,
    filters,
)
from telegram.request import HTTPXRequest

from bots.http_metrics import httpx_hooks
from bots.inflight import keep_marking_interrupted
from bots.telegram_bot.feedback import on_feedback_button, on_reaction
from bots.telegram_bot.handlers import (
    bot_commands,
    check_access,
    cmd_ask,
    cmd_help,
    on_choice,
    on_command,
    on_error,
    on_group_text,
    on_private_text,
)
from bots.telegram_bot.settings import TelegramSettings
from bots.telegram_bot.sink import (
    LIMIT,
    NO_PREVIEW,
    RESTARTED,
    edit_message,
    restart_note_target,
    telegram_pacer,
)
from bots.telegram_bot.state import BotState, Drafts
from bots.text import utf16_len
from core import metrics
from core.commands import COMMANDS as CORE_COMMANDS
from core.service import ChatService
from core.settings import SettingsError

log = logging.getLogger(__name__)


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
        .rate_limiter(_rate_limiter())
        .request(HTTPXRequest(connection_pool_size=256, httpx_kwargs=httpx_hooks("telegram")))  # metrics
        .get_updates_request(HTTPXRequest(connection_pool_size=1, httpx_kwargs=httpx_hooks("telegram")))
        .build()
    )
    app.bot_data["lorabot"] = BotState(service, settings, telegram_pacer(), drafts=Drafts(settings.drafts))
    private = filters.ChatType.PRIVATE
    groups = filters.ChatType.GROUPS
    app.add_handler(TypeHandler(Update, check_access), group=-1)
    app.add_handler(CommandHandler(["start", "help"], cmd_help))
    app.add_handler(CommandHandler("ask", cmd_ask))
    core_commands = list(CORE_COMMANDS)  # every command of core/commands.py, with its keyboard
    app.add_handler(CommandHandler(core_commands, on_command))
    app.add_handler(CallbackQueryHandler(on_feedback_button, pattern="^fb:"))  # 👍 👎 🔁 under replies
    app.add_handler(CallbackQueryHandler(on_choice, pattern=f"^({'|'.join(map(re.escape, core_commands))}):"))
    app.add_handler(
        MessageReactionHandler(
            on_reaction, message_reaction_types=MessageReactionHandler.MESSAGE_REACTION_UPDATED
        )
    )
    text = filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND
    app.add_handler(MessageHandler(text & private, on_private_text))
    app.add_handler(MessageHandler(text & groups, on_group_text))
    app.add_error_handler(on_error)
    return app


def _rate_limiter() -> AIORateLimiter:
    """PTB's limiter keeps *every* call (commands, buttons, replies) within 30/s overall and
    20/min per group. It does not retry: a 429 goes back to the caller, so a reply's delivery task
    can send newer text later instead of the stale text waiting here (docs/telegram.md)."""
    # With max_retries=0 it logs every 429 as an ERROR with a traceback although the caller handles
    # it; the delivery layer logs one warning per 429 instead.
    logging.getLogger("telegram.ext.AIORateLimiter").setLevel(logging.CRITICAL)
    return AIORateLimiter(
        overall_max_rate=29, overall_time_period=1, group_max_rate=20, group_time_period=60, max_retries=0
    )


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
    metrics.platform_connected("telegram", False)  # until updates come (/readyz)
    try:
        app = build_application(service, settings)
        try:
            await app.initialize()  # getMe: checks the token
        except InvalidToken:  # its message quotes the token: don't pass it on
            raise SettingsError(
                f"TELEGRAM_TOKEN was rejected by the Bot API at {settings.api_base_url} "
                "(check the token from @BotFather)."
            ) from None
        log.info("Telegram: logged in as @%s (id %s)", app.bot.username, app.bot.id)
        marking = asyncio.create_task(_mark_restarted(app))
        try:
            with contextlib.suppress(TelegramError):
                await app.bot.set_my_commands(bot_commands())
            await _start_updates(app, settings)
            await app.start()
            metrics.platform_connected("telegram", True)
            await asyncio.Future()  # until cancelled
        finally:
            marking.cancel()
            await _stop(app, settings.shutdown_grace_s)
            await app.shutdown()
    finally:
        metrics.platform_gone("telegram")
        for handler in handlers:
            handler.removeFilter(redactor)


async def _start_updates(app: Application, settings: TelegramSettings) -> None:
    """Long polling by default; a webhook server when TELEGRAM_WEBHOOK_URL is set. Reactions
    come only when asked for (and in groups only where the bot is an administrator)."""
    updates = [Update.MESSAGE, Update.CALLBACK_QUERY, Update.MESSAGE_REACTION]
    updater = app.updater
    if updater is None:  # build_application always makes one
        raise RuntimeError("the Telegram application has no updater")
    if settings.webhook_url is None:
        await updater.start_polling(
            timeout=dtm.timedelta(seconds=settings.poll_timeout_s),
            allowed_updates=updates,
            drop_pending_updates=settings.drop_pending_updates,
        )
        log.info("Telegram bot @%s is running (long polling)", app.bot.username)
        return
    secret = (
        settings.webhook_secret.get_secret_value() if settings.webhook_secret else secrets.token_urlsafe(32)
    )
    await updater.start_webhook(
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
        app.bot.username,
        settings.webhook_url,
        settings.webhook_listen,
        settings.webhook_port,
    )


async def _mark_restarted(app: Application) -> None:
    """Edit the replies a killed process left half-written, so none stays without a note (at
    start, then now and then: the store may mark another process's turns later)."""
    state = app.bot_data["lorabot"]

    async def edit(ref: str, text: str) -> None:
        draft = restart_note_target(ref)
        if draft is not None:  # only a draft showed it, which vanished: the note is a message
            chat_id, thread, reply_to = draft
            reply = ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None
            await app.bot.send_message(
                chat_id,
                text,
                message_thread_id=thread,
                reply_parameters=reply,
                link_preview_options=NO_PREVIEW,
            )
            return
        chat_id, message_id = (int(part) for part in ref.split(":"))
        await edit_message(app.bot, chat_id, message_id, text)

    try:
        await keep_marking_interrupted(
            state.service, "telegram", edit, limit=LIMIT, length=utf16_len, note=RESTARTED
        )
    except Exception:
        log.exception("could not mark the replies interrupted by the last restart")


async def _stop(app: Application, grace_s: float) -> None:
    """Stop fetching, let replies finish within `grace_s`, interrupt the rest, stop PTB."""
    state = app.bot_data["lorabot"]
    state.inflight.closing = True
    if app.updater and app.updater.running:
        try:
            async with asyncio.timeout(5):
                await app.updater.stop()
        except TimeoutError:
            log.warning("Telegram did not answer while stopping the updates; going on")
    await state.inflight.shutdown(grace_s)
    if app.running:
        await app.stop()
    log.info("Telegram bot stopped")
