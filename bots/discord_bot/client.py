"""The discord.py client: decides whether a message is for the bot, then hands it to the core."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import discord
from discord import app_commands

from bots.delivery import Sink
from bots.discord_bot.commands import ChoiceButton, register_commands
from bots.discord_bot.feedback import DYNAMIC_ITEMS, on_reaction
from bots.discord_bot.policy import Origin, conversation_id, is_allowed, model_scopes
from bots.discord_bot.settings import DiscordSettings
from bots.discord_bot.sink import (
    DISCORD_LIMIT,
    NO_MENTIONS,
    NOTES,
    RESTARTED,
    ChannelSink,
    ThreadSink,
    discord_pacer,
    request,
)
from bots.http_metrics import aiohttp_trace
from bots.inflight import InFlight, keep_marking_interrupted
from bots.replying import EditTiming, Outcome, Question, answer_question
from core import metrics
from core.service import ChatService

log = logging.getLogger(__name__)


def origin_of(user: discord.abc.User, channel: Any, guild: discord.Guild | None, channel_id: int) -> Origin:
    """Reduce a message's or interaction's author and place to plain IDs."""
    roles = frozenset(role.id for role in getattr(user, "roles", ()) if guild is None or role.id != guild.id)
    parent = getattr(channel, "parent_id", None) if isinstance(channel, discord.Thread) else None
    return Origin(
        user_id=user.id,
        channel_id=channel_id,
        guild_id=guild.id if guild is not None else None,
        parent_channel_id=parent,
        role_ids=roles,
    )


def thread_name(prompt: str) -> str:
    """A thread title from the question: first line, at most 90 characters, never empty."""
    first_line = prompt.strip().splitlines()[0] if prompt.strip() else ""
    return (first_line[:87] + "...") if len(first_line) > 90 else (first_line or "lorabot")


class LorabotTree(app_commands.CommandTree):
    """Applies the allow/deny lists to every slash command and autocomplete."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        client: LorabotClient = interaction.client  # type: ignore[assignment]
        if client.closing:
            if interaction.type is discord.InteractionType.application_command:
                await interaction.response.send_message(
                    "lorabot is shutting down; try again in a moment.",
                    ephemeral=True,
                    allowed_mentions=NO_MENTIONS,
                )
            return False
        if is_allowed(client.settings, client.origin_of_interaction(interaction)):
            return True
        if interaction.type is discord.InteractionType.application_command:
            await interaction.response.send_message(
                "Sorry, you can't use lorabot here.", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
        return False


class LorabotClient(discord.Client):
    """One bot: `service` answers, `settings` says who may ask and how fast to edit."""

    def __init__(self, service: ChatService, settings: DiscordSettings, **options: Any) -> None:
        # Only what the bot reads: servers (channels, threads, roles), messages, and reactions
        # (👍/👎 ratings; the core ignores them while LORABOT_FEEDBACK is off).
        intents = discord.Intents(
            guilds=True, guild_messages=True, dm_messages=True, guild_reactions=True, dm_reactions=True
        )
        intents.message_content = settings.message_content_intent
        options.setdefault("allowed_mentions", NO_MENTIONS)
        options.setdefault("http_trace", aiohttp_trace("discord"))  # every REST call counted (metrics)
        super().__init__(intents=intents, **options)
        self.service = service
        self.settings = settings
        self.tree = LorabotTree(self)
        self.inflight = InFlight()
        self.pacer = discord_pacer()
        self.pace = EditTiming(edit_interval_s=settings.edit_interval_s, typing_interval_s=8.0)
        self._restart_marked = False

    @property
    def closing(self) -> bool:
        return self.inflight.closing

    async def setup_hook(self) -> None:
        register_commands(self.tree)
        # 👍 👎 🔁 under replies and the choices of /forget and /feedback, from before a restart too
        self.add_dynamic_items(*DYNAMIC_ITEMS, ChoiceButton)
        if self.settings.sync_commands:
            synced = await self.tree.sync()
            log.info("synced %d slash commands", len(synced))

    async def on_ready(self) -> None:
        metrics.platform_connected("discord", True)
        log.info(
            "Discord: logged in as %s (id %s) in %d servers%s",
            self.user,
            self.user.id if self.user else "?",
            len(self.guilds),
            shards_described(self),
        )
        if not self._restart_marked:  # on_ready repeats after reconnects
            self._restart_marked = True
            marking = keep_marking_interrupted(
                self.service, "discord", self._edit_by_ref, limit=DISCORD_LIMIT, note=RESTARTED
            )
            self.inflight.run_in_background(marking, name="lorabot-mark-interrupted")

    async def on_resumed(self) -> None:
        metrics.platform_connected("discord", True)

    async def on_disconnect(self) -> None:
        metrics.platform_connected("discord", False)

    async def _edit_by_ref(self, ref: str, text: str) -> None:
        channel_id, message_id = (int(part) for part in ref.split(":"))
        message = self.get_partial_messageable(channel_id).get_partial_message(message_id)
        await request(message.edit(content=text, allowed_mentions=NO_MENTIONS))

    # -- messages ----------------------------------------------------------------------
    def addressed(self, message: discord.Message) -> bool:
        """DMs, threads the bot started, replies to the bot, and mentions of the bot or its role.

        `@everyone` / `@here` do not count: nobody wants every announcement answered.
        """
        assert self.user is not None
        if self.mentions_me(message):
            return True
        if not message.content:
            # Without the Message Content intent Discord blanks messages that don't mention us;
            # a blank message (or a bare image/sticker) is nothing to answer.
            return False
        if message.guild is None:
            return True
        channel = message.channel
        if isinstance(channel, discord.Thread) and channel.owner_id == self.user.id:
            return True
        replied = message.reference.resolved if message.reference else None
        return isinstance(replied, discord.Message) and replied.author.id == self.user.id

    def mentions_me(self, message: discord.Message) -> bool:
        """The bot's user, or its managed role (people often pick it from the @ menu)."""
        assert self.user is not None
        if any(user.id == self.user.id for user in message.mentions):
            return True
        own_role = message.guild.self_role if message.guild else None
        return own_role is not None and own_role in message.role_mentions

    def prompt_of(self, message: discord.Message) -> str:
        """The text for the model: the bot's own mention removed, other mentions as readable names."""
        assert self.user is not None
        text = re.sub(rf"<@!?{self.user.id}>", "", message.content)
        own_role = message.guild.self_role if message.guild else None
        if own_role is not None:
            text = text.replace(own_role.mention, "")
        for user in message.mentions:
            text = re.sub(rf"<@!?{user.id}>", f"@{user.display_name}", text)
        for role in message.role_mentions:
            text = text.replace(role.mention, f"@{role.name}")
        for channel in message.channel_mentions:
            text = text.replace(channel.mention, f"#{channel.name}")
        return text.strip()

    async def on_message(self, message: discord.Message) -> None:
        if self.closing or message.author.bot or self.user is None or message.author.id == self.user.id:
            return
        if not self.addressed(message):
            return
        origin = origin_of(message.author, message.channel, message.guild, message.channel.id)
        if not is_allowed(self.settings, origin):
            log.debug("ignoring message %s from %s: not allowed", message.id, origin.user_id)
            return
        async with self.inflight.track():
            try:
                await self._answer(message, origin)
            except discord.Forbidden as error:  # no Send Messages / thread permission here
                log.warning("can't answer in channel %s: %s", message.channel.id, error)

    async def _answer(self, message: discord.Message, origin: Origin) -> None:
        """Reply to `message` (in a new thread with DISCORD_REPLY_IN_THREAD).

        The thread is started only once the question is accepted (rate limit, admission): a
        refused question is answered inline and leaves no thread behind. Discord gives a thread
        started from a message that message's id, so its conversation is known before it exists."""
        if self.settings.reply_in_thread and isinstance(message.channel, discord.TextChannel):
            sink = ThreadSink(message, thread_name(self.prompt_of(message)))
            in_thread = replace(origin, channel_id=message.id, parent_channel_id=message.channel.id)
            await self.respond(sink, in_thread, self.prompt_of(message), on_accepted=sink.open)
            return
        await self.respond(ChannelSink(message.channel, message), origin, self.prompt_of(message))

    async def respond(
        self,
        sink: Sink,
        origin: Origin,
        prompt: str,
        *,
        on_accepted: Callable[[], Awaitable[None]] | None = None,
        regenerate_turn: int | None = None,
        existing: list[tuple[Any, str]] | None = None,
    ) -> Outcome:
        """Answer `prompt` from `origin` into `sink` (a channel message or an interaction); with
        `regenerate_turn`, a new answer to that turn, written over `existing` (handle, text shown).

        Callers wrap it in `self.inflight.track()` so shutdown waits for (or interrupts) it."""
        question = Question(
            conversation_id=conversation_id(origin),
            user_id=f"discord:{origin.user_id}",
            text=prompt,
            scope_id=model_scopes(origin),
            platform="discord",
            regenerate_turn=regenerate_turn,
            shared=origin.is_thread,
        )
        return await answer_question(
            self.service,
            sink,
            self.pacer,
            question,
            pace=self.pace,
            notes=NOTES,
            interrupt=self.inflight.interrupt,
            on_accepted=on_accepted,
            existing=existing,
        )

    # -- feedback ----------------------------------------------------------------------
    async def on_raw_reaction_add(self, event: discord.RawReactionActionEvent) -> None:
        await on_reaction(self, event)

    async def on_raw_reaction_remove(self, event: discord.RawReactionActionEvent) -> None:
        await on_reaction(self, event)

    async def regenerate(self, interaction: discord.Interaction, turn_id: int) -> None:
        """🔁 pressed: a new answer streams into the reply's own messages, in place of the old one.

        The press is acknowledged at once without a message (deferred update); a refusal (not the
        latest answer, already regenerating, rate limit…) leaves the old answer as it is and is
        told to the presser only."""
        pressed = interaction.message
        if pressed is None:  # Discord always sends it with a button press
            return
        await interaction.response.defer()  # type 6: nothing shown, the message stays as it is
        existing = await self._shown_reply(turn_id, pressed)
        sink = ChannelSink(
            self.get_partial_messageable(pressed.channel.id, guild_id=interaction.guild_id),
            with_buttons={pressed.id} if pressed.components else set(),
        )
        origin = self.origin_of_interaction(interaction)
        async with self.inflight.track():
            outcome = await self.respond(sink, origin, "", regenerate_turn=turn_id, existing=existing)
        if outcome.turn_id is None and outcome.text:  # refused before it began: nothing changed
            await interaction.followup.send(outcome.text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    async def _shown_reply(self, turn_id: int, pressed: discord.Message) -> list[tuple[Any, str]]:
        """The reply's messages (handles the sink edits) and what they show, as far as known: the
        pressed one's text, '' for the others so they are rewritten. Only the pressed message
        when the store has no refs for the turn (e.g. a reply from before they were stored)."""
        platform, refs = await self.service.reply_refs(turn_id)
        ids = [tuple(int(part) for part in ref.split(":")) for ref in refs] if platform == "discord" else []
        if pressed.id not in (message_id for _, message_id in ids):
            ids = [(pressed.channel.id, pressed.id)]
        return [
            (
                self.get_partial_messageable(channel_id).get_partial_message(message_id),
                pressed.content if message_id == pressed.id else "",
            )
            for channel_id, message_id in ids
        ]

    # -- helpers for commands ----------------------------------------------------------
    def origin_of_interaction(self, interaction: discord.Interaction) -> Origin:
        return origin_of(
            interaction.user, interaction.channel, interaction.guild, interaction.channel_id or 0
        )

    async def wait_idle(self, timeout: float = 30) -> None:
        """Wait until no reply is in flight (tests use it to know a reply is complete)."""
        await self.inflight.wait_idle(timeout)

    async def shutdown(self, grace_s: float) -> None:
        """Stop taking requests, give in-flight replies `grace_s`, interrupt the rest, log out.

        Bounded even when Discord is unreachable: replies get a few seconds to show their note,
        and closing the gateway connection gets a few more."""
        await self.inflight.shutdown(grace_s)
        try:
            async with asyncio.timeout(5):
                await self.close()
        except TimeoutError:
            log.warning("Discord did not answer while logging out; exiting anyway")


class ShardedLorabotClient(LorabotClient, discord.AutoShardedClient):
    """The same bot on several gateway connections: this process runs `DISCORD_SHARD_IDS` of
    `DISCORD_SHARD_COUNT`, and Discord sends it only those shards' servers (DMs go to shard 0).
    REST calls (sending, editing) are not sharded, so any process can edit any reply."""


def make_client(service: ChatService, settings: DiscordSettings, **options: Any) -> LorabotClient:
    """A sharded client when DISCORD_SHARD_COUNT is set, else the plain one-connection client."""
    if settings.shard_count is None:
        return LorabotClient(service, settings, **options)
    shard_ids = sorted(settings.shard_ids) or None  # None: every shard of the count
    return ShardedLorabotClient(
        service, settings, shard_count=settings.shard_count, shard_ids=shard_ids, **options
    )


def shards_described(client: discord.Client) -> str:
    if not isinstance(client, discord.AutoShardedClient):
        return ""
    return f" (shards {sorted(client.shards)} of {client.shard_count})"
