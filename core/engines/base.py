"""The one engine interface: the embedded llama.cpp engine, test engines and (later) remote
OpenAI-compatible engines all fit it.

Engine methods are blocking and are only ever called from the compute thread
(`core.worker.ComputeThread`), because a `llama_cpp.Llama` is not thread-safe, with one exception:
methods marked `@thread_safe` (tokenizer work that only reads the vocabulary) are run by
`LoadedModel.call` at once in the caller's thread, instead of waiting for a decode step to end.

Engines that batch (the llama.cpp one) also offer `begin(request, stats) -> state`,
`step([state, ...]) -> [(text, finished), ...]` (one decode for all of them) and
`end(state, failed=...)`; the compute thread drives those.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
F = TypeVar("F", bound=Callable[..., object])


def thread_safe(fn: F) -> F:
    """Mark an engine method as safe to call from any thread while the compute thread decodes."""
    fn.thread_safe = True  # type: ignore[attr-defined]
    return fn


def is_thread_safe(fn: Callable[..., object]) -> bool:
    return bool(getattr(fn, "thread_safe", False))


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    conversation_id: str
    messages: list[Message]
    max_new_tokens: int = 400
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 3407


@dataclass
class GenerationStats:
    """Filled in by the engine while it generates."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    extras: dict[str, float] = field(default_factory=dict)


class Engine(Protocol):
    name: str
    context_length: int

    def count_tokens(self, messages: list[Message]) -> int:
        """Prompt length in tokens once the chat template is applied (with the generation prompt)."""

    def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` that is at most `max_tokens` tokens."""

    def generate(
        self, request: GenerationRequest, cancel: threading.Event, stats: GenerationStats
    ) -> Iterator[str]:
        """Yield pieces of the reply; stop within a token once `cancel` is set."""

    def forget(self, conversation_id: str) -> None:
        """Drop any cached state (KV cache) kept for this conversation."""

    def close(self) -> None:
        """Free the model."""
