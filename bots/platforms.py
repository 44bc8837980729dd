"""Which chat platforms are configured, and how to start each one.

Each adapter owns its settings (token, URLs, allow lists); here we only ask whether a token
is set and hand back `runner(service)` coroutines for the CLI.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Awaitable, Callable

from dotenv import dotenv_values

from core.service import ChatService
from core.settings import SettingsError

Runner = Callable[[ChatService], Awaitable[None]]

# platform name -> (token variable, adapter module, settings class, run function)
PLATFORMS: dict[str, tuple[str, str, str, str]] = {
    "discord": ("DISCORD_TOKEN", "bots.discord_bot", "DiscordSettings", "run_discord"),
    "telegram": ("TELEGRAM_TOKEN", "bots.telegram_bot", "TelegramSettings", "run_telegram"),
}


def token_configured(variable: str) -> bool:
    return bool(os.environ.get(variable) or dotenv_values(".env").get(variable))


def platform_runner(name: str) -> Runner:
    """Load the adapter for `name`; RuntimeError with a clear reason if it can't run."""
    variable, module_name, settings_name, run_name = PLATFORMS[name]
    if not token_configured(variable):
        raise RuntimeError(f"{variable} is not set (in the environment or .env): {name} is not configured.")
    try:
        module = importlib.import_module(module_name)
        settings_class = getattr(module, settings_name)
        run = getattr(module, run_name)
    except (ImportError, AttributeError) as error:
        raise RuntimeError(
            f"The {name} adapter is not available ({error}). Install it with `pip install -e '.[{name}]'`."
        ) from error
    try:
        settings = settings_class.load()
    except SettingsError as error:
        raise RuntimeError(str(error)) from error

    async def runner(service: ChatService) -> None:
        await run(service, settings)

    return runner


def configured_platforms() -> list[tuple[str, Runner]]:
    return [(name, platform_runner(name)) for name, spec in PLATFORMS.items() if token_configured(spec[0])]
