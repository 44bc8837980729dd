"""A fake Telegram Bot API server for tests: see server.py."""

from bench.fakes.telegram import BOT_ID, BOT_USERNAME, Call, FakeBotAPI, formatting_error, parse_entities, utf16_len

__all__ = ["BOT_ID", "BOT_USERNAME", "Call", "FakeBotAPI", "formatting_error", "parse_entities", "utf16_len"]
