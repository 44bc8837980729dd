"""Telegram adapter (python-telegram-bot v22); `run_telegram(service, settings)` is the entry point."""

from bots.telegram_bot.bot import build_application, run_telegram
from bots.telegram_bot.settings import TelegramSettings, load_telegram_settings

__all__ = ["TelegramSettings", "build_application", "load_telegram_settings", "run_telegram"]
