"""Feedback from Telegram: 👍/👎 reactions, and the 👍 👎 🔁 buttons under each final reply.

Reactions arrive as `message_reaction` updates (private chats, and groups where the bot is an
administrator); the core finds the turn from the message (`rate_message`). Buttons carry the turn
(`fb:up:<turn>`, see `sink.reply_keyboard`) and work in every chat. 🔁 streams a new answer into
the reply's own messages through the same path as every answer (`sink.deliver_answer`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from telegram import CallbackQuery, Message, ReactionType, ReactionTypeEmoji, Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bots.replying import Question
from bots.telegram_bot.policy import conversation_id, scope_id
from bots.telegram_bot.sink import FEEDBACK_DATA, TelegramSink, deliver_answer
from bots.telegram_bot.state import bot_state
from core.feedback import Rated

log = logging.getLogger(__name__)

UP, DOWN = "👍", "👎"
VALUES = {"up": 1, "down": -1}
ALERT_LIMIT = 200  # characters Telegram shows in a callback query's answer
ANSWERS = {
    Rated.NOTED: "Thanks — noted {emoji}",
    Rated.OFF: "Ratings are turned off for this bot.",
    Rated.OPTED_OUT: "You turned feedback off, so ratings aren't stored (/feedback on to change that).",
}


# -- reactions ----------------------------------------------------------------------------------
def _emoji(reactions: Sequence[ReactionType]) -> set[str]:
    return {reaction.emoji for reaction in reactions if isinstance(reaction, ReactionTypeEmoji)}


def vote(emoji: AbstractSet[str], before: AbstractSet[str] = frozenset()) -> int | None:
    """+1 for 👍, -1 for 👎, None for neither. Premium users may set both: then the one just
    added (not in `before`) counts; both at once say nothing."""
    up, down = UP in emoji, DOWN in emoji
    if up and down:
        added = emoji - before
        up, down = UP in added, DOWN in added
    if up == down:
        return None
    return 1 if up else -1


async def on_reaction(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A changed reaction rates the turn the message belongs to; a removed 👍/👎 deletes only that
    rating (`only_if`), so removing 👍 after 👎 was stored keeps the 👎. Reactions that name no
    person (anonymous admins, channels) have no rater and are ignored."""
    reaction = update.message_reaction
    if reaction is None or reaction.user is None or reaction.user.is_bot:
        return
    old = _emoji(reaction.old_reaction)
    new, before = vote(_emoji(reaction.new_reaction), old), vote(old)
    if new == before:  # e.g. ❤ added next to 👍: the rating stays
        return
    service = bot_state(context).service
    ref = f"{reaction.chat.id}:{reaction.message_id}"
    rater = f"telegram:{reaction.user.id}"
    if new is None:
        await service.rate_message("telegram", ref, rater, None, only_if=before)
    else:
        await service.rate_message("telegram", ref, rater, new)


# -- buttons ------------------------------------------------------------------------------------
async def on_feedback_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """👍 / 👎 rate the turn (pressing again changes nothing); 🔁 regenerates it."""
    query = update.callback_query
    if query is None:
        return
    match = FEEDBACK_DATA.match(query.data or "")
    if match is None:
        await query.answer("This button is not mine (any more).", show_alert=True)
        return
    action, turn_id = match.group(1), int(match.group(2))
    if action == "again":
        await regenerate(query, context, turn_id)
        return
    rater = f"telegram:{query.from_user.id}"
    rated = await bot_state(context).service.rate(turn_id, rater, VALUES[action])
    await query.answer(ANSWERS[rated].format(emoji=UP if action == "up" else DOWN))


async def regenerate(query: CallbackQuery, context: ContextTypes.DEFAULT_TYPE, turn_id: int) -> None:
    """A new answer in place of the old one, in the reply's own messages. A refusal (not the
    latest answer, already regenerating, rate limit…) is an alert; the old answer stays."""
    message = query.message if isinstance(query.message, Message) else None
    if message is None:  # too old for Telegram to send it: nothing to write into
        await query.answer("This answer is too old to regenerate.", show_alert=True)
        return
    existing = await _shown(context, turn_id, message)
    question = Question(
        conversation_id=conversation_id(message),
        user_id=f"telegram:{query.from_user.id}",
        text="",
        scope_id=scope_id(message.chat),
        platform="telegram",
        regenerate_turn=turn_id,
        shared=message.chat.type != "private",
    )

    async def accepted() -> None:
        with contextlib.suppress(TelegramError):  # a late answer must not stop the new answer
            await query.answer()

    sink = TelegramSink(message, reply=False)
    outcome = await deliver_answer(
        context, sink, message.chat, question, existing=existing, on_accepted=accepted
    )
    if outcome.turn_id is None:  # refused before it began: nothing on screen changed
        await query.answer(outcome.text[:ALERT_LIMIT], show_alert=True)


async def _shown(context: ContextTypes.DEFAULT_TYPE, turn_id: int, pressed: Message) -> list[tuple[int, str]]:
    """The reply's messages in this chat (handles as the sink makes them, oldest first) and what
    they show, as far as known: the pressed one's text; '' for the others, so they are rewritten.
    The pressed message belongs to it even where the store does not say so (yet)."""
    _, refs = await bot_state(context).service.reply_refs(turn_id)
    chat = str(pressed.chat_id)
    parts = (ref.partition(":") for ref in refs)  # a draft's ref ("chat:draft:…") names no message
    handles = {int(message) for where, _, message in parts if where == chat and message.isdigit()}
    handles.add(pressed.message_id)  # a message's id grows with each one sent: sorting keeps the order
    return [
        (handle, (pressed.text or "") if handle == pressed.message_id else "") for handle in sorted(handles)
    ]
