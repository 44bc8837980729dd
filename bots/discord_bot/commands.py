"""Slash commands: /chat, /model, /model-default, /persona and /help here; every command of
`core.commands.COMMANDS` (/reset, /stats, /temperature, …) becomes an app command by itself.

The commands' logic lives in core/commands.py; this module only turns an interaction into a
`Where` (the permissions Discord gives), the argument, and renders the `Shown` (ephemeral unless it
changed what everyone here shares). The allow/deny lists are applied once in
`LorabotTree.interaction_check`.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bots.discord_bot.feedback import may_press
from bots.discord_bot.policy import (
    Origin,
    channel_scope,
    conversation_id,
    may_set_channel_model,
    may_set_server_model,
    model_scopes,
    scope_id,
)
from bots.discord_bot.sink import DISCORD_LIMIT, NO_MENTIONS, InteractionSink
from core.commands import (
    COMMANDS,
    Choice,
    Command,
    Shown,
    Where,
    help_lines,
    model_choices,
    persona_choices,
    run_command,
    set_scope_model,
    set_scope_persona,
)

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
• `/persona` shows the personas (a system prompt, sometimes with its own model). In a server, \
members with Manage Channels (or lorabot admins) choose one with `/persona name:` (`scope:channel`: \
the channel's default); in DMs you do.
Replies stream in as they are written; when many people ask at once you'll see your place in the queue.
More commands, each for your conversation here:
"""

CONVERSATION, CHANNEL = "conversation", "channel"
SCOPES = [
    app_commands.Choice(name="my conversation here (default)", value=CONVERSATION),
    app_commands.Choice(name="the whole channel (Manage Channels)", value=CHANNEL),
]


def _client(interaction: discord.Interaction) -> LorabotClient:
    return interaction.client  # type: ignore[return-value]


def _fit(text: str) -> str:
    return text[: DISCORD_LIMIT - 1] + "…" if len(text) > DISCORD_LIMIT else text  # e.g. a long model list


async def _say(
    interaction: discord.Interaction,
    text: str,
    *,
    ephemeral: bool = True,
    view: discord.ui.View | None = None,
) -> None:
    await interaction.response.send_message(
        _fit(text),
        ephemeral=ephemeral,
        allowed_mentions=NO_MENTIONS,
        view=view if view is not None else discord.utils.MISSING,  # MISSING: no components at all
    )


@app_commands.command(name="chat", description="Ask lorabot something (no mention needed).")
@app_commands.describe(prompt="What you want to ask")
async def chat(interaction: discord.Interaction, prompt: str) -> None:
    client = _client(interaction)
    origin = client.origin_of_interaction(interaction)
    await interaction.response.defer(thinking=True)  # Discord shows "lorabot is thinking…"
    async with client.inflight.track():
        await client.respond(InteractionSink(interaction), origin, prompt)


def _where(interaction: discord.Interaction, origin: Origin) -> Where:
    """In a channel each person has their own conversation, so anyone may change theirs; a thread
    is shared by everyone in it (and anyone in it may change it, as before). The user id is the one
    replies are asked with, so /forget and /feedback find that person's questions and ratings."""
    return Where(
        conversation_id(origin),
        f"discord:{origin.user_id}",
        scopes=model_scopes(origin),
        shared=origin.is_thread,
    )


async def _show(interaction: discord.Interaction, shown: Shown) -> None:
    await _say(interaction, shown.text, ephemeral=not shown.public, view=choice_view(shown))


# Commands whose choices are buttons under the answer: /forget's confirmation and /feedback's
# on/off. (/model offers its many choices through autocomplete instead.)
CHOICE_BUTTONS = ("forget", "feedback")


def choice_view(shown: Shown) -> discord.ui.View | None:
    """The answer's choices as buttons (the one in effect highlighted), or None."""
    if shown.choose not in CHOICE_BUTTONS or not shown.choices:
        return None
    view = discord.ui.View(timeout=None)
    for choice in shown.choices[:5]:
        view.add_item(ChoiceButton(shown.choose, choice.value, choice.label, selected=choice.selected))
    return view


class ChoiceButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"lorabot:cmd:(?P<name>{'|'.join(CHOICE_BUTTONS)}):(?P<value>[a-z]+)",
):
    """Runs `/<name> <value>` for whoever presses it (only ever about themselves) and shows the
    result in place of the question (an ephemeral message stays ephemeral)."""

    def __init__(self, name: str, value: str, label: str = "", *, selected: bool = False) -> None:
        style = discord.ButtonStyle.primary if selected else discord.ButtonStyle.secondary
        super().__init__(
            discord.ui.Button(
                style=style, label=(label or value)[:80], custom_id=f"lorabot:cmd:{name}:{value}"
            )
        )
        self.name, self.value = name, value

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ChoiceButton:
        return cls(match["name"], match["value"])

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await may_press(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        client = _client(interaction)
        where = _where(interaction, client.origin_of_interaction(interaction))
        shown = await run_command(client.service, where, self.name, self.value)
        await interaction.response.edit_message(
            content=_fit(shown.text), view=choice_view(shown), allowed_mentions=NO_MENTIONS
        )


async def _set_channel_model(interaction: discord.Interaction, origin: Origin, name: str) -> Shown:
    """The channel's model is everyone's default there: Manage Channels (or a lorabot admin)."""
    client = _client(interaction)
    allowed = may_set_channel_model(
        client.settings, origin, manage_channels=interaction.permissions.manage_channels
    )
    return await set_scope_model(
        client.service,
        channel_scope(origin),
        name,
        allowed=allowed,
        who="members with Manage Channels (or lorabot admins)",
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
    client = _client(interaction)
    origin = client.origin_of_interaction(interaction)
    if name and scope is not None and scope.value == CHANNEL and not origin.is_dm:  # a DM is one conversation
        await _show(interaction, await _set_channel_model(interaction, origin, name))
    else:
        await _show(
            interaction, await run_command(client.service, _where(interaction, origin), "model", name or "")
        )


@model.autocomplete("name")
async def model_name_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    return _suggestions(model_choices(_client(interaction).service), current)


def _suggestions(choices: list[Choice], current: str) -> list[app_commands.Choice[str]]:
    needle = current.lower()
    return [
        app_commands.Choice(name=choice.label[:100], value=choice.value)
        for choice in choices
        if needle in choice.value.lower()
    ][:25]


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
    allowed = may_set_server_model(client.settings, origin, manage_guild=interaction.permissions.manage_guild)
    shown = await set_scope_model(
        client.service, server, name, allowed=allowed, who="members with Manage Server (or lorabot admins)"
    )
    await _show(interaction, shown)


PERSONA_SETTERS = "members with Manage Channels (or lorabot admins)"


def _persona_where(interaction: discord.Interaction, origin: Origin) -> Where:
    """A persona sets how the bot speaks in a server's channel: there only those who may manage
    the channel (or lorabot admins) choose one, also for their own conversation; in a DM, the user."""
    client = _client(interaction)
    may = origin.is_dm or may_set_channel_model(
        client.settings, origin, manage_channels=interaction.permissions.manage_channels
    )
    return replace(_where(interaction, origin), may_change=may, who_may_change=PERSONA_SETTERS)


@app_commands.command(
    name="persona", description="Show the personas, or choose one here (in servers: Manage Channels)."
)
@app_commands.describe(
    name="Persona to use, or 'default' (leave empty to list them)",
    scope="Your conversation here (default) or the channel's default (Manage Channels)",
)
@app_commands.choices(scope=SCOPES)
async def persona(
    interaction: discord.Interaction, name: str | None = None, scope: app_commands.Choice[str] | None = None
) -> None:
    client = _client(interaction)
    origin = client.origin_of_interaction(interaction)
    where = _persona_where(interaction, origin)
    if name and scope is not None and scope.value == CHANNEL and not origin.is_dm:
        scope_key = channel_scope(origin)
        shown = await set_scope_persona(
            client.service, scope_key, name, allowed=where.may_change, who=PERSONA_SETTERS
        )
    else:
        shown = await run_command(client.service, where, "persona", name or "")
    await _show(interaction, shown)


@persona.autocomplete("name")
async def persona_name_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    return _suggestions(persona_choices(_client(interaction).service), current)


@app_commands.command(name="help", description="What lorabot can do.")
async def help_command(interaction: discord.Interaction) -> None:
    lines = [line for line in help_lines() if not line.startswith(("/model", "/persona"))]
    await _say(interaction, HELP + "\n".join(f"• {line}" for line in lines))


AppCommand = app_commands.Command[Any, ..., None]


def app_command(entry: Command) -> AppCommand:
    """A core command as a Discord app command: its argument an optional string option, with
    autocomplete where the command suggests values."""

    async def run_plain(interaction: discord.Interaction) -> None:
        await _run(interaction, entry.name, "")

    @app_commands.rename(value=entry.argument or "value")
    @app_commands.describe(value=entry.argument_help or entry.argument or "value")
    async def run_with_argument(interaction: discord.Interaction, value: str | None = None) -> None:
        await _run(interaction, entry.name, value or "")

    callback = run_plain if entry.argument is None else run_with_argument
    command: AppCommand = app_commands.Command(
        name=entry.name, description=entry.summary[:100], callback=callback
    )
    if entry.suggest is not None:
        suggest = entry.suggest

        @command.autocomplete("value")
        async def complete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return _suggestions(suggest(_client(interaction).service), current)

    return command


async def _run(interaction: discord.Interaction, name: str, argument: str) -> None:
    client = _client(interaction)
    where = _where(interaction, client.origin_of_interaction(interaction))
    await _show(interaction, await run_command(client.service, where, name, argument))


DISCORD_ONLY: tuple[AppCommand, ...] = (
    chat,
    model,
    model_default,
    persona,
    help_command,
)  # /model and /persona here also take a scope


def register_commands(tree: app_commands.CommandTree) -> None:
    for command in DISCORD_ONLY:
        tree.add_command(command)
    for entry in COMMANDS.values():
        if entry.name not in {command.name for command in DISCORD_ONLY}:
            tree.add_command(app_command(entry))
