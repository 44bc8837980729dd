"""Slash commands: /chat, /model, /model-default, /reset, /help, /stats, /temperature.

Each is a small decorated function; the allow/deny lists are applied once in
`LorabotTree.interaction_check`. Replies about settings are ephemeral so channels stay quiet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bots.discord_bot.policy import (
    Origin,
    channel_scope,
    conversation_id,
    may_set_channel_model,
    may_set_server_model,
    model_scopes,
    scope_id,
)
from bots.discord_bot.replies import DISCORD_LIMIT, NO_MENTIONS, InteractionSink
from bots.text import stats_lines
from core.errors import ChatError

if TYPE_CHECKING:  # the client registers these commands: no import at run time, no cycle
    from bots.discord_bot.client import LorabotClient

HELP = """\
**lorabot** answers with its own small language model, running on a CPU.
• Mention me (`@lorabot your question`) or reply to my message in a channel, or DM me.
  In threads I started, just write.
• `/chat prompt:` asks without a mention.
• In a channel each person has their own conversation with me; a thread or a DM is one conversation.
• `/model` shows the model here. `/model name:` changes it for your conversation here only (in a \
thread: the thread's, shared by everyone in it). `/model name: scope:channel` changes it for the whole \
channel (Manage Channels). `/model-default name:` sets the server's default (Manage Server).
  Your conversation's choice wins over the channel's, the channel's over the server's.
• `/reset` makes me forget this conversation; `/stats` shows the queue and speed.
• `/temperature value:` sets how varied my answers are in your conversation here (0–2; `default` goes back to the model's).
Replies stream in as they are written; when many people ask at once you'll see your place in the queue."""

CONVERSATION, CHANNEL = "conversation", "channel"
SCOPES = [
    app_commands.Choice(name="my conversation here (default)", value=CONVERSATION),
    app_commands.Choice(name="the whole channel (Manage Channels)", value=CHANNEL),
]


def _client(interaction: discord.Interaction) -> LorabotClient:
    return interaction.client  # type: ignore[return-value]


def _code(name: str) -> str:
    return f"`{name.replace('`', '')}`"


async def _say(interaction: discord.Interaction, text: str, *, ephemeral: bool = True) -> None:
    if len(text) > DISCORD_LIMIT:  # e.g. a long model list
        text = text[: DISCORD_LIMIT - 1] + "…"
    await interaction.response.send_message(text, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS)


@app_commands.command(name="chat", description="Ask lorabot something (no mention needed).")
@app_commands.describe(prompt="What you want to ask")
async def chat(interaction: discord.Interaction, prompt: str) -> None:
    client = _client(interaction)
    origin = client.origin_of_interaction(interaction)
    await interaction.response.defer(thinking=True)  # Discord shows "lorabot is thinking…"
    async with client.inflight.track():
        await client.answer(InteractionSink(interaction), origin, prompt)


async def _list_models(interaction: discord.Interaction, origin: Origin) -> None:
    service = _client(interaction).service
    current = await service.current_model(conversation_id(origin), model_scopes(origin))
    lines = [f"Model here: {_code(current)}", "Available:"]
    for entry in service.models():
        about = f" — {entry.description}" if entry.description else ""
        lines.append(f"• {_code(entry.name)}{about}")
    await _say(interaction, "\n".join(lines))


async def _set_conversation_model(interaction: discord.Interaction, origin: Origin, name: str) -> None:
    """Anyone may pick the model of their own conversation (a thread's is shared: say it publicly)."""
    entry = await _client(interaction).service.set_model(conversation_id(origin), name)
    if origin.is_dm:
        await _say(interaction, f"Our DMs now use {_code(entry.name)}.")
    elif origin.is_thread:
        await _say(interaction, f"This thread now uses {_code(entry.name)}.", ephemeral=False)
    else:
        await _say(interaction, f"Your conversation here now uses {_code(entry.name)}.")


async def _set_channel_model(interaction: discord.Interaction, origin: Origin, name: str) -> None:
    """The channel's model is everyone's default there: Manage Channels (or a lorabot admin)."""
    client = _client(interaction)
    if not may_set_channel_model(
        client.settings, origin, manage_channels=interaction.permissions.manage_channels
    ):
        await _say(
            interaction,
            "Only members with **Manage Channels** (or lorabot admins) can change the model for the "
            "whole channel; `/model name:` alone changes it for your own conversation.",
        )
        return
    entry = await client.service.set_scope_default(channel_scope(origin), name)
    await _say(
        interaction,
        f"This channel now uses {_code(entry.name)} (conversations here that picked their own keep it).",
        ephemeral=False,
    )


@app_commands.command(
    name="model", description="Show the model here, or change it for your conversation (or the channel)."
)
@app_commands.describe(
    name="Model to use (leave empty to list the models)",
    scope="Change it for your conversation here (default) or the whole channel (Manage Channels)",
)
@app_commands.choices(scope=SCOPES)
async def model(
    interaction: discord.Interaction, name: str | None = None, scope: app_commands.Choice[str] | None = None
) -> None:
    origin = _client(interaction).origin_of_interaction(interaction)
    if not name:
        await _list_models(interaction, origin)
        return
    try:
        if scope is not None and scope.value == CHANNEL and not origin.is_dm:  # a DM is one conversation
            await _set_channel_model(interaction, origin, name)
        else:
            await _set_conversation_model(interaction, origin, name)
    except ChatError as error:
        await _say(interaction, f"⚠️ {error.user_message}")


@model.autocomplete("name")
async def model_name_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    needle = current.lower()
    choices = []
    for entry in _client(interaction).service.models():
        if needle in entry.name.lower():
            label = f"{entry.name} — {entry.description}" if entry.description else entry.name
            choices.append(app_commands.Choice(name=label[:100], value=entry.name))
    return choices[:25]


@app_commands.command(
    name="model-default", description="Set the server's default model (Manage Server or lorabot admins)."
)
@app_commands.describe(name="Model every conversation here uses unless it picked its own")
@app_commands.autocomplete(name=model_name_autocomplete)
@app_commands.guild_only()
async def model_default(interaction: discord.Interaction, name: str) -> None:
    client = _client(interaction)
    origin = client.origin_of_interaction(interaction)
    server = scope_id(origin)
    if server is None:  # guild_only hides it in DMs; an old client may still send it
        await _say(interaction, "`/model-default` works in a server; in DMs use `/model`.")
        return
    if not may_set_server_model(client.settings, origin, manage_guild=interaction.permissions.manage_guild):
        await _say(
            interaction,
            "Only members with **Manage Server** (or lorabot admins) can change the server default.",
        )
        return
    try:
        entry = await client.service.set_scope_default(server, name)
    except ChatError as error:
        await _say(interaction, f"⚠️ {error.user_message}")
        return
    await _say(interaction, f"The server's default model is now {_code(entry.name)}.", ephemeral=False)


@app_commands.command(name="reset", description="Make lorabot forget this conversation.")
async def reset(interaction: discord.Interaction) -> None:
    client = _client(interaction)
    try:
        await client.service.reset(conversation_id(client.origin_of_interaction(interaction)))
    except ChatError as error:  # e.g. the history store refused the write: nothing was forgotten
        await _say(interaction, f"⚠️ {error.user_message}")
        return
    await _say(interaction, "Done: I forgot our conversation here.")


@app_commands.command(name="help", description="What lorabot can do.")
async def help_command(interaction: discord.Interaction) -> None:
    await _say(interaction, HELP)


@app_commands.command(name="stats", description="Queue, loaded models and speed.")
async def stats(interaction: discord.Interaction) -> None:
    client = _client(interaction)
    service, origin = client.service, client.origin_of_interaction(interaction)
    numbers = service.stats()
    wait = service.estimated_wait_s(numbers.queue_depth + 1) if numbers.queue_depth else None
    model_here = await service.current_model(conversation_id(origin), model_scopes(origin))
    temperature = await service.current_temperature(conversation_id(origin), model_here)
    here = f"Model in your conversation here: {_code(model_here)}, temperature {temperature:g}"
    await _say(interaction, "\n".join([here, *stats_lines(numbers, wait)]))


@app_commands.command(name="temperature", description="Show or set how varied answers are in your conversation here.")
@app_commands.describe(value="0 (always the same answer) to 2 (most varied), or 'default'")
async def temperature(interaction: discord.Interaction, value: str | None = None) -> None:
    client = _client(interaction)
    origin = client.origin_of_interaction(interaction)
    conversation = conversation_id(origin)
    model_here = await client.service.current_model(conversation, model_scopes(origin))
    if value is not None:
        try:
            await client.service.set_temperature(conversation, value)
        except ChatError as error:
            await _say(interaction, f"⚠️ {error.user_message}")
            return
    current = await client.service.current_temperature(conversation, model_here)
    await _say(interaction, f"Temperature in your conversation here: {current:g}.")


def register_commands(tree: app_commands.CommandTree) -> None:
    for command in (chat, model, model_default, reset, help_command, stats, temperature):
        tree.add_command(command)
