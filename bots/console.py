"""Terminal chat: the third adapter, and the quickest way to talk to a model."""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import TextIO

from core.errors import ChatError
from core.events import Delta, Done, Notice, Queued
from core.service import ChatService

HELP = """Commands:
  /model NAME   switch this chat to another registered model
  /model        show the current model
  /models       list registered models
  /reset        forget this conversation
  /temperature [X|default]  show or set how varied answers are (0–2)
  /help         this help
  /quit         leave (Ctrl-D works too)"""


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
        argument = argument.strip()
        if name in {"quit", "exit", "q"}:
            return False
        if name == "help":
            self.say(HELP)
        elif name == "models":
            current = await self.service.current_model(self.conversation_id)
            for entry in self.service.models():
                marker = "*" if entry.name == current else " "
                self.say(f" {marker} {entry.name:<24} {entry.description}")
        elif name == "model" and argument:
            try:
                await self.service.set_model(self.conversation_id, argument)
                self.say(f"Now using {argument}.")
            except ChatError as error:
                self.say(error.user_message)
        elif name == "model":
            self.say(f"Current model: {await self.service.current_model(self.conversation_id)}")
        elif name == "temperature":
            try:
                if argument:
                    await self.service.set_temperature(self.conversation_id, argument)
                model = await self.service.current_model(self.conversation_id)
                self.say(f"Temperature: {await self.service.current_temperature(self.conversation_id, model):g}")
            except ChatError as error:
                self.say(error.user_message)
        elif name == "reset":
            try:
                await self.service.reset(self.conversation_id)
                self.say("Conversation forgotten.")
            except ChatError as error:
                self.say(error.user_message)
        else:
            self.say(f"Unknown command /{name}. {HELP}")
        return True

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
