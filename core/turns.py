"""Turns: a question and its reply, stored from the moment the question is accepted.

A turn is `pending` while it is answered, then `answered`, `interrupted` (cancelled, stopped by a
shutdown, or left by a process that died) or `failed` (an error ended it). Only answered turns go
back into the model's context. Each turn remembers which process owns it, so a restart can tell a
leftover of a killed process from a reply another live process (e.g. a second bot on the same
data folder) is still writing.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache
from typing import Literal

TurnState = Literal["pending", "answered", "interrupted", "failed"]


@dataclass(frozen=True)
class InterruptedReply:
    """A reply a previous process left unfinished on a platform: `handles` say where it is shown
    (opaque adapter strings, e.g. "chat:message") and `shown` what it showed, so the adapter can
    mark it as interrupted."""

    turn_id: int
    conversation_id: str
    handles: list[str]
    shown: str


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), which tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def process_owner() -> str:
    """This process, as stored with its turns: host, pid and start time."""
    return _owner(os.getpid())


@cache
def _owner(pid: int) -> str:  # by pid: a forked child is another owner
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"


def owner_alive(owner: str | None) -> bool:
    """Whether another process that owns turns still runs (unknown hosts count as gone: a store on
    a network share is not supported by SQLite anyway)."""
    if not owner or owner == process_owner():
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    now = _start_time(pid)
    return not (started and now and now != started) and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False
