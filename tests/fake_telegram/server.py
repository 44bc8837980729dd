"""The fake Telegram Bot API lives in `bench/fakes/telegram.py` (the load benchmark starts it too)."""

from bench.fakes.telegram import *  # noqa: F401,F403
