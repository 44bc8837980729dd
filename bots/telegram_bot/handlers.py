"""The bot's handlers: access checks, messages, /ask /help, every command of core/commands.py, errors.

A core command's handler only builds the `Where` (the chat's admins may change what a group
shares) and renders the `Shown`: text, and its choices as an inline keyboard whose buttons run the
command again with their value (`callback_data` = "command:value")."""

from __future__ import annotations

import contextlib
import logging

from telegram import (
    BotCommand,
    CallbackQuery,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    Update,
)
from telegram.constants import ChatMemberStatus
from telegram.error import BadRequest, TelegramError
from telegram.ext import (
    ApplicationHandlerStop,
    ContextTypes,
)

from bots.telegram_bot.policy import addressed_text, conversation_id, is_anonymous_admin, scope_id, sender_key
from bots.telegram_bot.sink import answer_message, say, waiting_out_flood_control
from bots.telegram_bot.state import bot_state
from core.commands import COMMANDS as CORE_COMMANDS
from core.commands import Shown, Where, help_lines, run_command

log = logging.getLogger(__name__)


def bot_commands() -> list[BotCommand]:
    """The command menu: ours, then every core command registered when the bot starts."""
    return [
        BotCommand("start", "Say hello and show what I can do"),
        BotCommand("help", "How to talk to me"),
        BotCommand("ask", "Ask a question: /ask your question"),
        *(BotCommand(entry.name, entry.summary[:256]) for entry in CORE_COMMANDS.values()),
    ]


HELP = (
    "I'm lorabot, a small language model running on a CPU.\n\n"
    "In a private chat just write to me. In a group, mention me (@{username}), reply to one of my "
    "messages, or use /ask <question>. In groups the conversation is shared, so only chat admins "
    "change it.\n\n"
    "{commands}\n\n"
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


def message_of(update: Update) -> Message:
    """The update's message: every handler here is registered for updates that carry one."""
    if update.effective_message is None:
        raise ValueError(f"update {update.update_id} has no message")
    return update.effective_message


def query_of(update: Update) -> CallbackQuery:
    if update.callback_query is None:
        raise ValueError(f"update {update.update_id} has no callback query")
    return update.callback_query


async def on_private_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Private chat: every text message is a question."""
    message = message_of(update)
    await answer_message(message, context, message.text or "")


async def on_group_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Group: answer only when mentioned or replied to."""
    message = message_of(update)
    text = addressed_text(message, context.bot.username, context.bot.id)
    if text is None:
        return
    if not text:
        await say(message, "Yes? Ask me something after the mention.")
        return
    await answer_message(message, context, text)


async def cmd_ask(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/ask question`, or `/ask` in reply to a message: that message's text is the question."""
    message = message_of(update)
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
    await answer_message(message, context, question)


async def cmd_help(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    service = bot_state(context).service
    message = message_of(update)
    model = await service.current_model(conversation_id(message), scope_id(message.chat))
    commands = "\n".join(help_lines())
    await say(message, HELP.format(username=context.bot.username, model=model, commands=commands))


async def is_chat_admin(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """May change what the whole chat shares (model, conversation)? Private chats: the user.

    Groups: chat administrators (asked with getChatMember at that moment), admins posting
    anonymously as the group (Telegram hides who, but only admins can), and TELEGRAM_ADMIN_IDS.
    """
    user, chat = update.effective_user, update.effective_chat
    if chat is None:
        return False
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


def _where(update: Update, context: ContextTypes.DEFAULT_TYPE, message: Message, user: str) -> Where:
    """A group's conversation (and its model, kept for the whole chat) is everyone's there."""
    return Where(
        conversation_id(message),
        user,
        scopes=(scope_id(message.chat),),
        shared=message.chat.type != Chat.PRIVATE,
        ask_may_change=lambda: is_chat_admin(update, context),
        model_scope=scope_id(message.chat),
    )


def _keyboard(shown: Shown) -> InlineKeyboardMarkup | None:
    if not shown.choices or shown.choose is None:
        return None
    buttons = []
    for index, choice in enumerate(shown.choices):
        data = f"{shown.choose}:{choice.value}"
        if len(data.encode()) > 64:  # Telegram's callback_data limit: the choice's place instead
            data = f"{shown.choose}:#{index}"
        buttons.append(
            [InlineKeyboardButton(("✅ " if choice.selected else "") + choice.value, callback_data=data)]
        )
    return InlineKeyboardMarkup(buttons)


async def on_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Any command of core/commands.py: `/name argument…`."""
    message = message_of(update)
    name = (message.text or "/").split(maxsplit=1)[0][1:].split("@", 1)[0].lower()
    where = _where(update, context, message, sender_key(message))
    shown = await run_command(bot_state(context).service, where, name, " ".join(context.args or []))
    await say(message, shown.text, reply_markup=_keyboard(shown))


async def on_choice(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A button of a command's keyboard: run that command with the button's value."""
    query = query_of(update)
    service = bot_state(context).service
    name, _, value = (query.data or "").partition(":")
    message = query.message if isinstance(query.message, Message) else None
    if message is None:  # too old for Telegram to send it: nothing to show the change in
        await query.answer("This menu is too old; send the command again.", show_alert=True)
        return
    where = _where(update, context, message, f"telegram:{query.from_user.id}")
    if value.startswith("#") and value[1:].isdigit():  # a value too long for callback_data: its place
        listed = (await run_command(service, where, name, "")).choices
        value = listed[int(value[1:])].value if int(value[1:]) < len(listed) else value
    shown = await run_command(service, where, name, value)
    await query.answer(shown.text[:200], show_alert=shown.refused)
    if shown.refused:
        return
    listing = await run_command(service, where, name, "")
    # a setting (one choice is ticked) shows its menu again, updated; a question such as
    # /forget's "yes" is answered once, so its button goes
    setting = any(choice.selected for choice in listing.choices)
    text = f"{shown.text} (set by {query.from_user.full_name})" if setting else shown.text
    with contextlib.suppress(BadRequest):  # e.g. the keyboard message is too old to edit
        await waiting_out_flood_control(
            lambda: query.edit_message_text(text, reply_markup=_keyboard(listing) if setting else None)
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
