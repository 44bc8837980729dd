"""The bot's handlers: access checks, messages, /ask /help /model /reset /stats, errors."""

from __future__ import annotations

import contextlib
import logging

from telegram import (
    BotCommand,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Update,
)
from telegram.constants import ChatMemberStatus
from telegram.error import BadRequest, TelegramError
from telegram.ext import (
    ApplicationHandlerStop,
    ContextTypes,
)

from bots.text import stats_lines
from bots.telegram_bot.policy import addressed_text, conversation_id, is_anonymous_admin, scope_id
from bots.telegram_bot.replies import (
    answer,
    say,
)
from bots.telegram_bot.state import bot_state
from core.errors import ChatError

log = logging.getLogger(__name__)

MODEL_PREFIX = "model:"
COMMANDS = [
    BotCommand("start", "Say hello and show what I can do"),
    BotCommand("help", "How to talk to me"),
    BotCommand("ask", "Ask a question: /ask your question"),
    BotCommand("model", "Choose the model for this chat"),
    BotCommand("reset", "Forget this conversation (in groups: admins only)"),
    BotCommand("stats", "Queue, speed and loaded models"),
    BotCommand("temperature", "Show or set how creative answers are: /temperature 0.7"),
]
HELP = (
    "I'm lorabot, a small language model running on a CPU.\n\n"
    "In a private chat just write to me. In a group, mention me (@{username}), reply to one of my "
    "messages, or use /ask <question>.\n\n"
    "/model – choose the model for this chat (in groups: admins only)\n"
    "/reset – forget this conversation (in groups: admins only, the group shares it)\n"
    "/stats – queue, speed and loaded models\n"
    "/temperature [0–2|default] – how creative answers are here (in groups: admins only)\n\n"
    "Model here: {model}"
)


# -- handlers -----------------------------------------------------------------------------------
async def check_access(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Runs before every handler: drop updates from users/chats outside the allow lists."""
    user = update.effective_user
    chat = update.effective_chat
    if bot_state(context).settings.is_allowed(user.id if user else None, chat.id if chat else None):
        return
    log.info(
        "Ignored update from user %s in chat %s (not in allow lists)", user and user.id, chat and chat.id
    )
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
    if (
        not question
        and message.reply_to_message
        and not (
            message.is_topic_message and message.reply_to_message.message_id == message.message_thread_id
        )
    ):
        question = message.reply_to_message.text or message.reply_to_message.caption or ""
    if not question:
        await say(message, "Usage: /ask <your question> (or reply /ask to a message)")
        return
    await answer(message, context, question)


async def cmd_help(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    service = bot_state(context).service
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
    service = bot_state(context).service
    message = update.effective_message
    current = await service.current_model(conversation_id(message), scope_id(message.chat))
    lines = [f"Model here: {current}", ""]
    lines += [
        f"• {entry.name}" + (f" – {entry.description}" if entry.description else "")
        for entry in service.models()
    ]
    if message.chat.type != Chat.PRIVATE:
        lines += ["", "Only chat admins can change it."]
    await say(message, "\n".join(lines), reply_markup=_model_keyboard(service.model_names(), current))


async def is_chat_admin(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """May change what the whole chat shares (model, conversation)? Private chats: the user.

    Groups: chat administrators (asked with getChatMember at that moment), admins posting
    anonymously as the group (Telegram hides who, but only admins can), and TELEGRAM_ADMIN_IDS.
    """
    user, chat = update.effective_user, update.effective_chat
    if chat.type == Chat.PRIVATE or is_anonymous_admin(update.message):
        return True
    if user is None:
        return False
    if user.id in bot_state(context).settings.admin_ids:
        return True
    try:
        member = await context.bot.get_chat_member(chat.id, user.id)
    except BadRequest as error:  # e.g. "user not found": not a member, so no admin
        log.info("getChatMember(%s, %s) failed: %s", chat.id, user.id, error)
        return False
    return member.status in (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)


async def on_model_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    service = bot_state(context).service
    if not await is_chat_admin(update, context):
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
    """Forget the conversation; in a group it is everyone's, so only chat admins may."""
    if not await is_chat_admin(update, context):
        await say(
            update.effective_message, "Only chat admins can reset this conversation (the group shares it)."
        )
        return
    try:
        removed = await bot_state(context).service.reset(conversation_id(update.effective_message))
    except ChatError as error:  # e.g. the history store refused the write: nothing was forgotten
        await say(update.effective_message, f"⚠️ {error.user_message}")
        return
    await say(update.effective_message, f"🧹 Forgot this conversation ({removed} messages).")


async def cmd_temperature(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/temperature` shows it, `/temperature 0.4` or `default` sets it for this conversation
    (in groups the conversation is shared: chat admins only, as for /reset)."""
    service, message = bot_state(context).service, update.effective_message
    conversation = conversation_id(message)
    if not context.args:
        current = await service.current_temperature(conversation, await _model_here(service, message))
        await say(message, f"Temperature here: {current:g} (0 = always the same answer, 2 = most varied)")
        return
    if not await is_chat_admin(update, context):
        await say(message, "Only chat admins can change the temperature here (the group shares it).")
        return
    try:
        await service.set_temperature(conversation, context.args[0])
    except ChatError as error:
        await say(message, f"⚠️ {error.user_message}")
        return
    current = await service.current_temperature(conversation, await _model_here(service, message))
    await say(message, f"Temperature here is now {current:g}.")


async def _model_here(service, message) -> str:
    return await service.current_model(conversation_id(message), scope_id(message.chat))


async def cmd_stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    service = bot_state(context).service
    stats = service.stats()
    message = update.effective_message
    model = await service.current_model(conversation_id(message), scope_id(message.chat))
    wait = service.estimated_wait_s(stats.queue_depth + 1) if stats.queue_depth else None
    temperature = await service.current_temperature(conversation_id(message), model)
    await say(message, "\n".join([f"Model here: {model}, temperature {temperature:g}", *stats_lines(stats, wait)]))


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log handler errors and tell the user instead of staying silent."""
    log.error("Telegram handler failed: %r", context.error, exc_info=context.error)
    if isinstance(update, Update) and update.effective_message and not update.callback_query:
        with contextlib.suppress(TelegramError):
            await say(update.effective_message, "⚠️ Sorry, something went wrong.")
    elif isinstance(update, Update) and update.callback_query:
        with contextlib.suppress(TelegramError):
            await update.callback_query.answer("Sorry, something went wrong.", show_alert=True)
