"""Fake Discord and Telegram servers on loopback, for the tests and `lorabot bench load`.

They speak the platforms' wire protocols and enforce their documented rate limits
(`limits.py`), so the real discord.py and python-telegram-bot run against them unmodified.
"""
