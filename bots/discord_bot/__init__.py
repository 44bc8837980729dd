"""Discord adapter (discord.py 2.x): mentions, DMs, bot threads and slash commands over ChatService."""

from bots.discord_bot.runner import run_discord
from bots.discord_bot.settings import DiscordSettings, load_discord_settings

__all__ = ["DiscordSettings", "load_discord_settings", "run_discord"]
