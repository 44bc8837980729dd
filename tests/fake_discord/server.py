"""The fake Discord lives in `bench/fakes/discord.py` (the load benchmark starts it too)."""

from bench.fakes.discord import *  # noqa: F401,F403
from bench.fakes.discord import EVERYDAY_PERMISSIONS, MANAGE_GUILD  # noqa: F401
