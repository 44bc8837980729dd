"""Timing a reply as a user sees it: shared by `lorabot bench engine` and `lorabot eval`."""

from __future__ import annotations

import time
from dataclasses import dataclass

from core.events import Delta, Done
from core.service import ChatService


@dataclass
class TimedReply:
    ttft_s: float  # from the request to the first piece of text
    stamps: list[float]  # perf_counter() at each piece of text
    done: Done

    @property
    def decode_tok_s(self) -> float:
        return decode_rate(self.stamps)


def decode_rate(stamps: list[float]) -> float:
    """Pieces per second between the first and the last one (prefill excluded); 0 if too few."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 2 else 0.0


async def timed_reply(service: ChatService, conversation_id: str, user_id: str, text: str) -> TimedReply:
    started = time.perf_counter()
    stamps: list[float] = []
    done = None
    async for event in service.reply(conversation_id, user_id, text):
        if isinstance(event, Delta):
            stamps.append(time.perf_counter())
        elif isinstance(event, Done):
            done = event
    if done is None or not stamps:
        raise RuntimeError("the model gave no reply")
    return TimedReply(stamps[0] - started, stamps, done)
