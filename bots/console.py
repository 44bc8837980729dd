"""Terminal chat: the third adapter, and the quickest way to talk to a model."""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import TextIO

from core.commands import Shown, Where, help_lines, run_command
from core.errors import ChatError
from core.events import Delta, Done, Notice, Queued
from core.service import ChatService

CONSOLE_COMMANDS = [
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
        reply = ""
        try:
            async for event in self.service.reply(self.conversation_id, self.user, text):
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
