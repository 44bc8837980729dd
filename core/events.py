"""What `ChatService.reply` yields: a stream of small, platform-free events."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Accepted:
    """The question is stored; `turn_id` names it for `record_delivery`."""

    turn_id: int
    replaces: str | None = None  # a regenerate: the answer being replaced (shown again if it fails)


@dataclass(frozen=True)
class Queued:
    """The request waits; `position` is 1 for 'next to run'."""

    position: int


@dataclass(frozen=True)
class Started:
    """Generation began on `model`."""

    model: str


@dataclass(frozen=True)
class Notice:
    """Something the user should know but that is not an error (e.g. their message was trimmed)."""

    text: str


@dataclass(frozen=True)
class Delta:
    """New reply text, to append to what came before."""

    text: str


@dataclass(frozen=True)
class Done:
    """The reply is complete; `text` is the whole of it."""

    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0
    tokens_per_s: float = 0.0
    finish_reason: str = "stop"
    extras: dict[str, float] = field(default_factory=dict)


ReplyEvent = Accepted | Queued | Started | Notice | Delta | Done
