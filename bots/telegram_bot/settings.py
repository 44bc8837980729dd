"""Telegram adapter settings: `TELEGRAM_*` environment variables or `.env`, checked at start-up."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bots.settings_types import IdSet
from core.settings import load_settings


class TelegramSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TELEGRAM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    token: SecretStr | None = Field(
        None, description="Bot token from @BotFather; the bot starts only when set."
    )
    api_base_url: str = Field(
        "https://api.telegram.org/bot",
        description="Bot API URL up to '/bot'; the token is appended (or replaces '{token}').",
    )
    file_base_url: str = Field("https://api.telegram.org/file/bot", description="Bot API file URL.")
    admin_ids: IdSet = Field(
        frozenset(),
        description="User ids that count as admins in every chat (may change a group's model and settings, "
        "/reset it) and pass the allow lists.",
    )
    allowed_user_ids: IdSet = Field(frozenset(), description="Only these users may use the bot (empty: all).")
    allowed_chat_ids: IdSet = Field(
        frozenset(), description="Only in these chats (empty: all). A private chat's id is the user's id."
    )
    edit_interval_s: float = Field(
        1.5,
        gt=0,
        description="Seconds before the first in-between edit of a streaming reply in a private chat; each "
        "later one waits 1.5x longer, up to 5 s (the final text is sent at once).",
    )
    group_edit_interval_s: float = Field(
        3.0, gt=0, description="Same in groups (Telegram allows ~20 messages a minute per group)."
    )
    typing_interval_s: float = Field(
        4.0, gt=0, description="How often the 'typing' action is renewed (it lasts ~5 s)."
    )
    drafts: bool = Field(
        True,
        description="Stream private replies as a draft (sendMessageDraft) and send the final text as a "
        "message; off: a message that is edited as it grows. Groups always get the edits.",
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="How long in-flight replies may finish on shutdown."
    )
    poll_timeout_s: int = Field(30, ge=0, le=50, description="Long-polling timeout for getUpdates.")
    drop_pending_updates: bool = Field(
        False, description="Skip messages that arrived while the bot was offline."
    )
    webhook_url: str | None = Field(
        None, description="Public HTTPS URL for webhook mode; empty: long polling."
    )
    webhook_listen: str = Field("0.0.0.0", description="Address the webhook server binds to.")
    webhook_port: int = Field(8443, ge=1, le=65535, description="Port the webhook server listens on.")
    webhook_secret: SecretStr | None = Field(
        None, description="Checks that webhook calls come from Telegram; default: random per start."
    )

    @field_validator("api_base_url", "file_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be the public https:// URL Telegram should call")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("token")
    @classmethod
    def _token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None  # TELEGRAM_TOKEN= (empty) means "not configured"
        if value is not None and ":" not in value.get_secret_value():
            raise ValueError("does not look like a bot token (expected '<digits>:<secret>' from @BotFather)")
        return value

    @classmethod
    def load(cls, **overrides: object) -> TelegramSettings:
        """Environment + `.env`; `SettingsError` names each bad value (used by bots/platforms.py)."""
        return load_telegram_settings(**overrides)

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def is_allowed(self, user_id: int | None, chat_id: int | None) -> bool:
        """Admins always; others when both allow lists (if set) contain them."""
        if user_id is not None and user_id in self.admin_ids:
            return True
        if self.allowed_user_ids and user_id not in self.allowed_user_ids:
            return False
        if self.allowed_chat_ids and chat_id not in self.allowed_chat_ids:
            return False
        return True


def load_telegram_settings(**overrides: object) -> TelegramSettings:
    """Load settings or raise `SettingsError` naming each bad value (never echoing the token)."""
    return load_settings(TelegramSettings, "TELEGRAM_", **overrides)
