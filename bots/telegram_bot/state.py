"""What the Telegram handlers share, kept in `application.bot_data`."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from telegram.ext import (
    ContextTypes,
)

from bots.inflight import InFlight
from bots.pacing import Pacer
from bots.telegram_bot.settings import TelegramSettings
from core.service import ChatService

log = logging.getLogger(__name__)


class Drafts:
    """Where replies stream as drafts (sendMessageDraft): with TELEGRAM_DRAFTS on, in private
    chats, except where Telegram refused a draft (that chat or topic; every chat once the API
    server does not know the method). Refusals are kept for this process's life, at most
    `max_refused` chats (the oldest forgotten: it is simply tried again)."""

    def __init__(self, enabled: bool, max_refused: int = 10_000) -> None:
        self.enabled = enabled
        self.max_refused = max_refused
        self._refused: OrderedDict[str, None] = OrderedDict()

    def allowed(self, where: str) -> bool:
        return self.enabled and where not in self._refused

    def refuse(self, where: str | None) -> None:
        """Drafts were refused in `where` (a chat or topic), or everywhere (None)."""
        if where is None:
            self.enabled = False
            log.warning("the Bot API server refuses sendMessageDraft: replies stream by edits")
            return
        self._refused[where] = None
        while len(self._refused) > self.max_refused:
            self._refused.popitem(last=False)


@dataclass
class BotState:
    """What the handlers share, kept in `application.bot_data`."""

    service: ChatService
    settings: TelegramSettings
    pacer: Pacer
    inflight: InFlight = field(default_factory=InFlight)
    drafts: Drafts = field(default_factory=lambda: Drafts(False))


def bot_state(context: ContextTypes.DEFAULT_TYPE) -> BotState:
    return context.bot_data["lorabot"]
