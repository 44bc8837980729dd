"""Turns: a question and its reply, stored from the moment the question is accepted.

A turn is `pending` while it is answered, then `answered`, `interrupted` (cancelled, stopped by a
shutdown, or left by a process that died) or `failed` (an error ended it). Only answered turns go
back into the model's context. Each turn remembers which process owns it, so a restart can tell a
leftover of a killed process from a reply another live process (e.g. a second bot on the same
database) is still writing. A process in this process's own pid namespace is checked by its pid;
any other (another host, another container) by its lease: the heartbeat it keeps in the store
(docs/scaling.md).
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from functools import cache
from typing import Literal

TurnState = Literal["pending", "answered", "interrupted", "failed"]


@dataclass(frozen=True)
class InterruptedReply:
    """A reply a previous process left unfinished on a platform: `handles` say where it is shown
    (opaque adapter strings, e.g. "chat:message") and `shown` what its last message showed (the
    whole reply in rows of versions before issue 21), so the adapter can mark it as interrupted."""

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
    """This process, as stored with its turns: host, pid, start time and pid namespace."""
    return _owner(os.getpid())


@cache
def _owner(pid: int) -> str:  # by pid: a forked child is another owner
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}:{pid_namespace()}"


@cache
def pid_namespace() -> str:
    """Where a pid means the same process: this boot of this kernel and this pid namespace (two
    containers on one host share the boot id, not the namespace; a host name may repeat)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            boot_id = boot.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return hashlib.sha256(f"{boot_id}/{namespace}".encode()).hexdigest()[:12]


def same_pid_namespace(owner: str) -> bool:
    """Whether `owner`'s pid can be checked here. Owners written before the namespace was stored
    (host:pid:start) count as local when their host is this one, as they did then."""
    parts = owner.split(":")
    return parts[0] == socket.gethostname() and (len(parts) < 4 or parts[3] == pid_namespace())


def owner_alive(owner: str | None, *, lease_fresh: bool = False) -> bool:
    """Whether another process that owns turns still runs: by its pid when it lives in this pid
    namespace, else by `lease_fresh` (its heartbeat in the store is recent)."""
    if not owner or owner == process_owner():
        return False
    if not same_pid_namespace(owner):
        return lease_fresh
    _host, pid_text, started = (owner.split(":") + ["", ""])[:3]
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
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
