"""Feedback from Discord: 👍/👎 reactions on any message of a reply, and 👍 👎 🔁 buttons under it.

Reactions arrive as raw gateway events (the non-privileged reaction intents), so a reaction on a
message from before a restart counts too; the core finds the turn from the message
(`rate_message`). The buttons are `DynamicItem`s whose custom id carries the turn
(`lorabot:rate:up:<turn>`, `lorabot:again:<turn>`): discord.py matches them by template, so they
work after a restart without any view kept in memory.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord

from bots.delivery import ReplyButtons
from bots.discord_bot.policy import Origin, is_allowed
from core.feedback import Rated

if TYPE_CHECKING:  # the client registers these items: no import at run time, no cycle
    from bots.discord_bot.client import LorabotClient

log = logging.getLogger(__name__)

UP, DOWN, AGAIN = "👍", "👎", "🔁"
VALUES = {"up": 1, "down": -1}
EMOJI = {"up": UP, "down": DOWN}
# skin tones (U+1F3FB-U+1F3FF) and the emoji variation selector do not change what 👍 says
_MODIFIERS = re.compile("[\U0001f3fb-\U0001f3ff\ufe0f]")
ANSWERS = {
    Rated.NOTED: "Thanks — noted {emoji}",
    Rated.OFF: "Ratings are turned off for this bot.",
    Rated.OPTED_OUT: "You turned feedback off, so ratings aren't stored (`/feedback on` to change that).",
}
REFUSED = "Sorry, you can't use lorabot here."
CLOSING = "lorabot is shutting down; try again in a moment."
NO_MENTIONS = discord.AllowedMentions.none()  # as in sink.py (which imports this module)


# -- reactions ----------------------------------------------------------------------------------
def vote_of(emoji: discord.PartialEmoji) -> int | None:
    """+1 for 👍, -1 for 👎 (any skin tone); None for every other emoji, custom ones included."""
    if emoji.id is not None or not emoji.name:
        return None
    return {UP: 1, DOWN: -1}.get(_MODIFIERS.sub("", emoji.name))


async def on_reaction(client: LorabotClient, event: discord.RawReactionActionEvent) -> None:
    """A 👍/👎 added rates the turn of the reply the message belongs to; removed, it deletes only
    that rating (`only_if`: removing 👍 after 👎 was stored keeps the 👎). The bot's own and other
    bots' reactions, reactions on messages that are not the bot's, and those of people the
    access lists refuse are ignored."""
    value = vote_of(event.emoji)
    if value is None or client.user is None or event.user_id == client.user.id:
        return
    if not _on_own_message(client, event):
        return
    added = event.event_type == "REACTION_ADD"
    if added and (
        (event.member is not None and event.member.bot)
        or not is_allowed(client.settings, _origin(client, event))
    ):
        return
    # A removal is not checked against the access lists: Discord sends no member (so no roles)
    # with it, and it only deletes what this person stored.
    ref = f"{event.channel_id}:{event.message_id}"
    rater = f"discord:{event.user_id}"
    if added:
        await client.service.rate_message("discord", ref, rater, value)
    else:
        await client.service.rate_message("discord", ref, rater, None, only_if=value)


def _on_own_message(client: LorabotClient, event: discord.RawReactionActionEvent) -> bool:
    """Whether the message may be the bot's: Discord says whose it is with an added reaction; for
    a removal, discord.py's message cache may know (else the core looks the message up)."""
    assert client.user is not None
    author = event.message_author_id
    if author is None:
        cached = discord.utils.get(client.cached_messages, id=event.message_id)
        author = cached.author.id if cached is not None else None
    return author is None or author == client.user.id


def _origin(client: LorabotClient, event: discord.RawReactionActionEvent) -> Origin:
    """The IDs the access lists need; a thread counts as its parent channel (from the cache)."""
    channel = client.get_channel(event.channel_id)
    parent = channel.parent_id if isinstance(channel, discord.Thread) else None
    roles = frozenset(
        role.id
        for role in getattr(event.member, "roles", ())
        if event.guild_id is None or role.id != event.guild_id
    )
    return Origin(
        user_id=event.user_id,
        channel_id=event.channel_id,
        guild_id=event.guild_id,
        parent_channel_id=parent,
        role_ids=roles,
    )


# -- buttons ------------------------------------------------------------------------------------
def reply_view(buttons: ReplyButtons) -> discord.ui.View:
    """The buttons under a final reply: one row, 👍 👎 (while ratings are on) and 🔁."""
    view = discord.ui.View(timeout=None)
    if buttons.rate:
        view.add_item(RateButton(buttons.turn_id, "up"))
        view.add_item(RateButton(buttons.turn_id, "down"))
    if buttons.regenerate:
        view.add_item(AgainButton(buttons.turn_id))
    return view


async def may_press(interaction: discord.Interaction) -> bool:
    """The access lists apply to buttons as to commands; a refusal is said to the presser only."""
    client: LorabotClient = interaction.client  # type: ignore[assignment]
    if client.closing:
        await _tell(interaction, CLOSING)
        return False
    if not is_allowed(client.settings, client.origin_of_interaction(interaction)):
        await _tell(interaction, REFUSED)
        return False
    return True


async def _tell(interaction: discord.Interaction, text: str) -> None:
    """An answer only the presser sees: the interaction's response, or a follow-up after it."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
    else:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


class RateButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"lorabot:rate:(?P<value>up|down):(?P<turn>\d+)",
):
    """👍 / 👎: rates the turn's current answer; pressing it again changes nothing."""

    def __init__(self, turn_id: int, value: str) -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.secondary,
                emoji=EMOJI[value],
                custom_id=f"lorabot:rate:{value}:{turn_id}",
            )
        )
        self.turn_id = turn_id
        self.value = value

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> RateButton:
        return cls(int(match["turn"]), match["value"])

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await may_press(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        client: LorabotClient = interaction.client  # type: ignore[assignment]
        rated = await client.service.rate(self.turn_id, f"discord:{interaction.user.id}", VALUES[self.value])
        await _tell(interaction, ANSWERS[rated].format(emoji=EMOJI[self.value]))


class AgainButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"lorabot:again:(?P<turn>\d+)"):
    """🔁: a new answer in place of this one (LorabotClient.regenerate)."""

    def __init__(self, turn_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.secondary, emoji=AGAIN, custom_id=f"lorabot:again:{turn_id}"
            )
        )
        self.turn_id = turn_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> AgainButton:
        return cls(int(match["turn"]))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await may_press(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        client: LorabotClient = interaction.client  # type: ignore[assignment]
        await client.regenerate(interaction, self.turn_id)


DYNAMIC_ITEMS = (RateButton, AgainButton)
