"""Thin platform adapters (Discord, Telegram, console) over `core.service.ChatService`."""
