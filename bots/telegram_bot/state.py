"""What the Telegram handlers share, kept in `application.bot_data`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from telegram.ext import (
    ContextTypes,
)

from bots.inflight import InFlight
from bots.pacing import Pacer
from bots.telegram_bot.settings import TelegramSettings
from core.service import ChatService

log = logging.getLogger(__name__)


@dataclass
class BotState:
    """What the handlers share, kept in `application.bot_data`."""

    service: ChatService
    settings: TelegramSettings
    pacer: Pacer
    inflight: InFlight = field(default_factory=InFlight)


def bot_state(context: ContextTypes.DEFAULT_TYPE) -> BotState:
    return context.bot_data["lorabot"]
