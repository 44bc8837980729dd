"""Mapping Telegram updates to the core: conversation and scope ids, whether the bot is
addressed, and keeping model output from notifying group members."""

from __future__ import annotations

import logging
import re

from telegram import (
    Chat,
    Message,
    MessageEntity,
)

log = logging.getLogger(__name__)


# -- mapping updates to the core -------------------------------------------------------------
def conversation_id(message: Message) -> str:
    """Private chat: the chat. Group: the whole chat, or the forum topic it was written in."""
    if message.is_topic_message and message.message_thread_id:
        return f"telegram:{message.chat_id}:topic:{message.message_thread_id}"
    return f"telegram:{message.chat_id}"


def scope_id(chat: Chat) -> str:
    """The model choice (/model) belongs to the chat, shared by its topics."""
    return f"telegram:{chat.id}"


def thread_id(message: Message) -> int | None:
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
