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
