"""Who may talk to the bot, and which conversation a message belongs to.

Pure functions over plain IDs so both messages and slash commands use the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from bots.discord_bot.settings import DiscordSettings


@dataclass(frozen=True)
class Origin:
    """Where a request comes from, reduced to the IDs the rules need."""

    user_id: int
    channel_id: int
    guild_id: int | None = None
    parent_channel_id: int | None = None  # set for threads
    role_ids: frozenset[int] = frozenset()

    @property
    def is_dm(self) -> bool:
        return self.guild_id is None

    @property
    def is_thread(self) -> bool:
        return self.parent_channel_id is not None


def conversation_id(origin: Origin) -> str:
    """A DM and a thread are one conversation each; in a plain channel each user has their own.

    Per-user-per-channel keeps two people chatting with the bot in #general from reading each
    other's context, which is what people expect from a personal assistant in a busy channel; a
    thread is a shared topic, so everyone in it shares the history.
    """
    if origin.is_dm:
        return f"discord:dm:{origin.user_id}"
    if origin.is_thread:
        return f"discord:thread:{origin.channel_id}"
    return f"discord:channel:{origin.channel_id}:user:{origin.user_id}"


def scope_id(origin: Origin) -> str | None:
    """The server: `/model-default` sets the model for every conversation in it."""
    return None if origin.guild_id is None else f"discord:guild:{origin.guild_id}"


def channel_scope(origin: Origin) -> str:
    """The text channel (a thread's parent): `/model scope:channel` sets its model for everyone.

    A thread follows its channel's choice; the thread's own conversation can still pick one.
    """
    return f"discord:channel:{origin.parent_channel_id or origin.channel_id}"


def model_scopes(origin: Origin) -> tuple[str, ...]:
    """Where a model choice comes from after the conversation's own: the channel, then the server."""
    server = scope_id(origin)
    return (channel_scope(origin), server) if server else (channel_scope(origin),)


def may_set_channel_model(settings: DiscordSettings, origin: Origin, *, manage_channels: bool) -> bool:
    """A channel-wide model changes everyone's default there: Manage Channels or a lorabot admin."""
    return manage_channels or origin.user_id in settings.admin_ids


def may_set_server_model(settings: DiscordSettings, origin: Origin, *, manage_guild: bool) -> bool:
    """The server default changes every conversation in it: Manage Server or a lorabot admin."""
    return manage_guild or origin.user_id in settings.admin_ids


def _server_lists_set(settings: DiscordSettings) -> bool:
    return bool(settings.allowed_guild_ids or settings.allowed_channel_ids or settings.allowed_role_ids)


def dm_allowed(settings: DiscordSettings, origin: Origin) -> bool:
    """DMs are in no server, so server allow lists can't be checked there; while one is set, a DM
    would let anyone past it. Then only listed users and admins may DM, unless DISCORD_OPEN_DMS."""
    if not settings.allow_dms:
        return False
    if settings.open_dms or not _server_lists_set(settings):
        return True
    return origin.user_id in settings.allowed_user_ids or origin.user_id in settings.admin_ids


def is_allowed(settings: DiscordSettings, origin: Origin) -> bool:
    """Deny lists always win; a non-empty allow list must contain the ID (roles: any of them)."""
    if origin.is_dm and not dm_allowed(settings, origin):
        return False
    channels = {origin.channel_id} | ({origin.parent_channel_id} if origin.parent_channel_id else set())
    if origin.user_id in settings.denied_user_ids or origin.role_ids & settings.denied_role_ids:
        return False
    if channels & settings.denied_channel_ids:
        return False
    if origin.guild_id is not None and origin.guild_id in settings.denied_guild_ids:
        return False
    if settings.allowed_user_ids and origin.user_id not in settings.allowed_user_ids:
        return False
    if origin.is_dm:
        return True  # dm_allowed stood in for the guild, channel and role allow lists
    if settings.allowed_guild_ids and origin.guild_id not in settings.allowed_guild_ids:
        return False
    if settings.allowed_channel_ids and not channels & settings.allowed_channel_ids:
        return False
    if settings.allowed_role_ids and not origin.role_ids & settings.allowed_role_ids:
        return False
    return True
