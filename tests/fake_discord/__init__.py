"""A fake Discord server (REST + gateway) for testing the Discord adapter with the real discord.py."""

from bench.fakes.discord import Call, FakeDiscord

__all__ = ["Call", "FakeDiscord"]
