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


_MENTION = re.compile(r"(?<![\w@])@(?=[A-Za-z0-9_]{3})")


def defuse_mentions(text: str) -> str:
    """Put a WORD JOINER after every mention-like '@' so model output never notifies a group member.

    Replies are plain text, so backticks are just characters to Telegram: a `@name` in "code"
    notifies as much as one outside it, and an unclosed ``` must not exempt the rest of the reply.
    Emails (word@host) are no mentions. Private chats don't need this: nobody else is there.
    """
    return _MENTION.sub("@\u2060", text)


def sender_key(message: Message) -> str:
    """Whose rate-limit bucket a message counts against: the user, or the chat it was sent as.

    Anonymous group admins all write as GroupAnonymousBot (one user id in every group) and
    channel posts as the channel; `sender_chat` is the closest thing to a sender they have, so
    the admins of one group share a bucket instead of every anonymous admin on Telegram.
    """
    if message.sender_chat is not None:
        return f"telegram:chat:{message.sender_chat.id}"
    if message.from_user is not None:
        return f"telegram:{message.from_user.id}"
    return f"telegram:chat:{message.chat_id}"


def is_anonymous_admin(message: Message | None) -> bool:
    """Sent by an admin of this group who posts as the group (Telegram hides which admin)."""
    if message is None or message.sender_chat is None:
        return False
    return message.sender_chat.id == message.chat_id


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
