"""`run_discord`: start the bot on a ChatService and keep it running until cancelled."""

from __future__ import annotations

import asyncio
import logging

import discord
import discord.gateway
import discord.http
import yarl

from bots.discord_bot.client import LorabotClient, make_client
from bots.discord_bot.settings import DiscordSettings
from core import metrics
from core.service import ChatService
from core.settings import SettingsError

log = logging.getLogger(__name__)


def configure_endpoints(settings: DiscordSettings) -> None:
    """Point discord.py at the configured REST base and gateway.

    discord.py reads both from class attributes (`Route.BASE` for every REST call, webhooks and
    interaction callbacks included; `DiscordWebSocket.DEFAULT_GATEWAY` for the first connect
    and after an invalidated session; resumes use the `resume_gateway_url` Discord sends in
    READY). They are process-wide, which fits one bot per process.
    """
    discord.http.Route.BASE = settings.api_base_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


async def run_discord(
    service: ChatService, settings: DiscordSettings, *, client: LorabotClient | None = None
) -> None:
    """Run the Discord bot until cancelled; then finish or interrupt in-flight replies and log out.

    `client` lets tests keep a handle on the client (and shorten `guild_ready_timeout`).
    """
    if not settings.enabled:
        raise SettingsError("DISCORD_TOKEN: not set; the Discord bot needs a bot token")
    token = settings.token.get_secret_value()  # type: ignore[union-attr]
    configure_endpoints(settings)
    client = client or make_client(service, settings)
    metrics.platform_connected("discord", False)  # until the gateway says READY (/readyz)
    try:
        await client.start(token)
    except discord.LoginFailure:
        raise SettingsError(
            "DISCORD_TOKEN: Discord rejected the token (check it in the Developer Portal)"
        ) from None
    except discord.PrivilegedIntentsRequired:
        raise SettingsError(
            "DISCORD_MESSAGE_CONTENT_INTENT: the Message Content intent is not enabled for this bot; "
            "enable it in the Developer Portal (Bot → Privileged Gateway Intents) or set "
            "DISCORD_MESSAGE_CONTENT_INTENT=false"
        ) from None
    finally:
        metrics.platform_gone("discord")
        await asyncio.shield(_shutdown(client, settings.shutdown_grace_s))


async def _shutdown(client: LorabotClient, grace_s: float) -> None:
    try:
        await client.shutdown(grace_s)
    except Exception:  # never let cleanup hide why we stopped
        log.exception("error while shutting down the Discord bot")
