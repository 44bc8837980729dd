"""Slash commands: /chat, /model, /model-default, /reset, /help, /stats.

Each is a small decorated function; the allow/deny lists are applied once in
`LorabotTree.interaction_check`. Replies about settings are ephemeral so channels stay quiet.
"""

from __future__ import annotations

import discord
from discord import app_commands

from bots.discord_bot.client import LorabotClient
from bots.discord_bot.policy import channel_scope, conversation_id, model_scopes, scope_id
from bots.discord_bot.replies import DISCORD_LIMIT, NO_MENTIONS, InteractionSink, stream_reply
from core.errors import ChatError

HELP = """\
**lorabot** answers with its own small language model, running on a CPU.
• Mention me (`@lorabot your question`) or reply to my message in a channel, or DM me.
  In threads I started, just write.
• `/chat prompt:` asks without a mention.
• In a channel each person has their own conversation with me; a thread or a DM is one conversation.
• `/model` shows or changes the model of this conversation; `/model-default` sets the server's default (Manage Server).
• `/reset` makes me forget this conversation; `/stats` shows the queue and speed.
Replies stream in as they are written; when many people ask at once you'll see your place in the queue."""


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
    async with client.track():
        await stream_reply(
            client.service,
            InteractionSink(interaction),
            conversation_id=conversation_id(origin),
            user_id=f"discord:{origin.user_id}",
            text=prompt,
            scope_id=model_scopes(origin),
            edit_interval_s=client.settings.edit_interval_s,
            interrupt=client.interrupt,
        )


@app_commands.command(name="model", description="Show or change the model used in this channel.")
@app_commands.describe(name="Model to use here (leave empty to list the models)")
async def model(interaction: discord.Interaction, name: str | None = None) -> None:
    client = _client(interaction)
    origin = client.origin_of_interaction(interaction)
    if not name:
        current = await client.service.current_model(conversation_id(origin), model_scopes(origin))
        lines = [f"Model here: {_code(current)}", "Available:"]
        for entry in client.service.models():
            about = f" — {entry.description}" if entry.description else ""
            lines.append(f"• {_code(entry.name)}{about}")
        await _say(interaction, "\n".join(lines))
        return
    try:
        entry = await client.service.set_scope_default(channel_scope(origin), name)
    except ChatError as error:
        await _say(interaction, f"⚠️ {error.user_message}")
        return
    where = "Our DMs now use" if origin.is_dm else "This thread now uses" if origin.is_thread else "This channel now uses"
    await _say(interaction, f"{where} {_code(entry.name)}.", ephemeral=origin.is_dm)


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


@app_commands.command(name="model-default", description="Set the server's default model (Manage Server).")
@app_commands.describe(name="Model every conversation here uses unless it picked its own")
@app_commands.autocomplete(name=model_name_autocomplete)
@app_commands.guild_only()
async def model_default(interaction: discord.Interaction, name: str) -> None:
    client = _client(interaction)
    server = scope_id(client.origin_of_interaction(interaction))
    if server is None:  # guild_only hides it in DMs; an old client may still send it
        await _say(interaction, "`/model-default` works in a server; in DMs use `/model`.")
        return
    is_admin = interaction.user.id in client.settings.admin_ids or interaction.permissions.manage_guild
    if not is_admin:
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
    await client.service.reset(conversation_id(client.origin_of_interaction(interaction)))
    await _say(interaction, "Done: I forgot our conversation here.")


@app_commands.command(name="help", description="What lorabot can do.")
async def help_command(interaction: discord.Interaction) -> None:
    await _say(interaction, HELP)


@app_commands.command(name="stats", description="Queue, loaded models and speed.")
async def stats(interaction: discord.Interaction) -> None:
    numbers = _client(interaction).service.stats()
    speed = f"{numbers.tokens_per_s:.1f} tokens/s" if numbers.tokens_per_s else "no replies yet"
    loaded = ", ".join(_code(name) for name in numbers.loaded_models) or "none"
    await _say(
        interaction,
        f"Queue: {numbers.queue_depth} waiting, {numbers.running} running\n"
        f"Loaded models: {loaded}\nSpeed (recent replies): {speed}\nReplies so far: {numbers.replies}",
    )


def register_commands(tree: app_commands.CommandTree) -> None:
    for command in (chat, model, model_default, reset, help_command, stats):
        tree.add_command(command)
