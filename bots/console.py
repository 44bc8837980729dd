"""Terminal chat: the third adapter, and the quickest way to talk to a model."""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import AsyncGenerator
from typing import TextIO

from core.commands import Shown, Where, help_lines, run_command
from core.errors import ChatError
from core.events import Delta, Done, Notice, Queued, ReplyEvent
from core.feedback import Rated
from core.service import ChatService

RATED = {
    Rated.NOTED: "Noted {mark} – thanks.",
    Rated.OFF: "Ratings are off for this bot (LORABOT_FEEDBACK=off).",
    Rated.OPTED_OUT: "You said /feedback off, so ratings are not kept.",
}

CONSOLE_COMMANDS = [
    "/good, /bad – rate the last answer 👍 or 👎",
    "/retry – a new answer to the last question, in place of the old one",
    "/models – list registered models",
    "/help – this help",
    "/quit – leave (Ctrl-D works too)",
]


def help_text() -> str:
    return "Commands:\n" + "\n".join(f"  {line}" for line in [*help_lines(), *CONSOLE_COMMANDS])


class ConsoleChat:
    def __init__(self, service: ChatService, *, out: TextIO = sys.stdout, user: str | None = None) -> None:
        self.service = service
        self.out = out
        self.user = user or getpass.getuser()
        self.conversation_id = f"console:{self.user}"

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    async def ask(self, text: str) -> str:
        """Send one message and stream the reply to the terminal; returns the reply text."""
        return await self._show(self.service.reply(self.conversation_id, self.user, text))

    async def retry(self) -> str:
        """/retry: the last answer again, differently (the old one is kept as feedback)."""
        turn = await self.service.latest_answered(self.conversation_id)
        if turn is None:
            self.say("Nothing to retry yet: ask something first.")
            return ""
        self.say("bot> ", end="")
        return await self._show(self.service.regenerate(turn, self.user))

    async def rate(self, value: int) -> None:
        """/good or /bad: rate the last answer."""
        turn = await self.service.latest_answered(self.conversation_id)
        if turn is None:
            self.say("Nothing to rate yet: ask something first.")
            return
        rated = await self.service.rate(turn, self.user, value)
        self.say(RATED[rated].format(mark="👍" if value > 0 else "👎"))

    async def _show(self, events: AsyncGenerator[ReplyEvent, None]) -> str:
        reply = ""
        try:
            async for event in events:
                match event:
                    case Queued(position=position) if position > 1:
                        self.say(f"(queued, #{position})")
                    case Notice(text=notice):
                        self.say(f"({notice})")
                    case Delta(text=piece):
                        self.say(piece, end="")
                    case Done(text=full):
                        reply = full
                        self.say()
        except ChatError as error:
            self.say(f"\n[{error.user_message}]")
        return reply

    async def command(self, line: str) -> bool:
        """Handle a /command; returns False when the user wants to leave."""
        name, _, argument = line[1:].partition(" ")
        if name in {"quit", "exit", "q"}:
            return False
        if name == "help":
            self.say(help_text())
            return True
        if name in {"good", "bad"}:
            await self.rate(1 if name == "good" else -1)
            return True
        if name == "retry":
            await self.retry()
            return True
        if name == "models":  # the terminal has no buttons: /model's list, marked
            name, argument = "model", ""
        shown = await run_command(self.service, self.where, name, argument)
        self.say(shown.text if not shown.choices else self._list(shown))
        return True

    @property
    def where(self) -> Where:
        """The terminal is one person's own conversation: they may change everything in it."""
        return Where(self.conversation_id, self.user)

    @staticmethod
    def _list(shown: Shown) -> str:
        head = shown.text.split("\n", 1)[0]
        return "\n".join([head, *(f" {'*' if c.selected else ' '} {c.label}" for c in shown.choices)])

    async def loop(self) -> None:
        model = await self.service.current_model(self.conversation_id)
        self.say(f"lorabot terminal chat on {model}. /help for commands, Ctrl-D to leave.")
        while True:
            try:
                line = await asyncio.to_thread(input, "you> ")
            except (EOFError, KeyboardInterrupt):
                self.say()
                return
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not await self.command(line):
                    return
                continue
            self.say("bot> ", end="")
            await self.ask(line)
