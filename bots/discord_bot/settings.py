"""Discord adapter settings: `DISCORD_*` environment variables (or `.env`), validated at start-up.

ID lists accept commas or spaces ("123, 456") or a JSON list. An empty allow list allows
everyone; a deny list always wins over an allow list.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bots.settings_types import IdSet
from core.settings import load_settings

DISCORD_API_BASE_URL = "https://discord.com/api/v10"
DISCORD_GATEWAY_URL = "wss://gateway.discord.gg/"


class DiscordSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DISCORD_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    token: SecretStr | None = Field(
        None, description="Bot token; the Discord bot starts only when it is set."
    )
    api_base_url: str = Field(
        DISCORD_API_BASE_URL, description="REST base URL incl. /api/v10 (e.g. a nirn-proxy)."
    )
    gateway_url: str = Field(DISCORD_GATEWAY_URL, description="Gateway websocket URL.")
    admin_ids: IdSet = Field(
        frozenset(),
        description="User IDs that may set channel models and server defaults anywhere, and DM the bot "
        "while a guild/channel/role allow list is set.",
    )
    allowed_guild_ids: IdSet = frozenset()
    denied_guild_ids: IdSet = frozenset()
    allowed_channel_ids: IdSet = Field(
        frozenset(), description="Channels (a thread counts as its parent too)."
    )
    denied_channel_ids: IdSet = frozenset()
    allowed_role_ids: IdSet = frozenset()
    denied_role_ids: IdSet = frozenset()
    allowed_user_ids: IdSet = frozenset()
    denied_user_ids: IdSet = frozenset()
    allow_dms: bool = Field(True, description="Answer direct messages (and commands in DMs).")
    open_dms: bool = Field(
        False,
        description="While a guild/channel/role allow list is set, answer DMs from anyone "
        "(default: only DISCORD_ALLOWED_USER_IDS and DISCORD_ADMIN_IDS).",
    )
    edit_interval_s: float = Field(
        1.0,
        ge=0.05,
        le=60,
        description="Seconds before the first in-between edit of a streaming reply; "
        "each later one waits 1.5x longer, up to 5 s (the final text is sent at once).",
    )
    message_content_intent: bool = Field(
        True,
        description="Ask for the privileged Message Content intent "
        "(needed to answer in bot threads without a mention).",
    )
    reply_in_thread: bool = Field(
        False,
        description="Answer a mention in a plain channel in a new thread (one conversation per thread).",
    )
    sync_commands: bool = Field(True, description="Overwrite the global slash commands on start.")
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="How long in-flight replies may finish on shutdown."
    )
    shard_count: int | None = Field(
        None,
        ge=1,
        description="Gateway shards in all (split the bot over several processes, docs/scaling.md); "
        "unset: one process, one connection.",
    )
    shard_ids: IdSet = Field(
        frozenset(),
        description="The shards this process runs, e.g. '0 1' (default: all DISCORD_SHARD_COUNT).",
    )

    @field_validator("token")
    @classmethod
    def _bare_token(cls, value: SecretStr | None) -> SecretStr | None:
        """Accept a token pasted with its "Bot " prefix or stray whitespace."""
        if value is None:
            return None
        text = value.get_secret_value().strip()
        return SecretStr(text[4:].strip() if text.startswith("Bot ") else text)

    @field_validator("api_base_url", "gateway_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip()
        if "://" not in value:
            raise ValueError("must be a full URL like https://host/api/v10 or wss://host/")
        return value

    @field_validator("api_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _shards_fit(self) -> DiscordSettings:
        if self.shard_ids and self.shard_count is None:
            raise ValueError(
                "DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT (the shards in all, over every process)"
            )
        if self.shard_count is not None and (
            outside := sorted(i for i in self.shard_ids if i >= self.shard_count)
        ):
            raise ValueError(
                f"DISCORD_SHARD_IDS {outside} must be below DISCORD_SHARD_COUNT ({self.shard_count}): "
                "ids count from 0"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.token is not None and bool(self.token.get_secret_value())

    @classmethod
    def load(cls, **overrides: object) -> DiscordSettings:
        """Load settings or raise `SettingsError` naming each bad value (what the CLI calls)."""
        return load_discord_settings(**overrides)


def load_discord_settings(**overrides: object) -> DiscordSettings:
    """Load settings or raise `SettingsError` naming each bad value (never echoing the token)."""
    return load_settings(DiscordSettings, "DISCORD_", **overrides)
