"""Settings: every bad value stops start-up with a message naming the variable."""

from __future__ import annotations

import pytest

from bots.discord_bot.settings import load_discord_settings
from bots.telegram_bot.settings import load_telegram_settings
from core.settings import SettingsError, load_core_settings


@pytest.mark.parametrize(
    ("variable", "value", "loader"),
    [
        ("TELEGRAM_ADMIN_IDS", "1, x", load_telegram_settings),
        ("DISCORD_DENIED_USER_IDS", "[1, 2.5]", load_discord_settings),
        ("LORABOT_CONTEXT_LENGTH", "tiny", load_core_settings),
        ("LORABOT_TEMPERATURE", "-1", load_core_settings),
    ],
)
def test_bad_value_names_the_variable(monkeypatch, variable, value, loader):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        loader(_env_file=None)


def test_id_lists_accept_commas_spaces_and_json(monkeypatch):
    monkeypatch.setenv("TELEGRAM_ALLOWED_CHAT_IDS", "-100123, 5 6")
    monkeypatch.setenv("DISCORD_ALLOWED_ROLE_IDS", "[4, 5]")
    assert load_telegram_settings(_env_file=None).allowed_chat_ids == {-100123, 5, 6}
    assert load_discord_settings(_env_file=None).allowed_role_ids == {4, 5}


def test_a_bad_secret_is_named_but_never_repeated(monkeypatch):
    monkeypatch.setenv("TELEGRAM_TOKEN", "no-colon-sekrit")  # not the shape BotFather gives
    with pytest.raises(SettingsError) as caught:
        load_telegram_settings(_env_file=None)
    assert "TELEGRAM_TOKEN" in str(caught.value) and "sekrit" not in str(caught.value)


def test_load_settings_hides_every_secret_field(monkeypatch):
    from pydantic import SecretStr, field_validator
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from core.settings import load_settings

    class Example(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="EXAMPLE_")
        api_key: SecretStr | None = None

        @field_validator("api_key")
        @classmethod
        def _always_bad(cls, value):
            raise ValueError("rejected")

    monkeypatch.setenv("EXAMPLE_API_KEY", "sekrit")
    with pytest.raises(SettingsError) as caught:
        load_settings(Example, "EXAMPLE_", _env_file=None)
    assert "EXAMPLE_API_KEY: Value error, rejected (got '<hidden>')" in str(caught.value)
