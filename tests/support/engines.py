"""A scripted engine: the real core (queue, history, models, streaming) with known output.

Used where a test must know the reply text in advance (splitting, mentions, fairness,
timeouts); the real model is exercised by the engine and end-to-end tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from core.engines.base import GenerationRequest, GenerationStats, Message
from core.registry import ModelEntry
from core.service import ChatService
from core.settings import CoreSettings, load_core_settings

Reply = str | Callable[[GenerationRequest], str]


class ScriptedEngine:
    """Streams a scripted reply word by word, honouring cancel like the real engine."""

    def __init__(
        self, name: str, reply: Reply, *, token_delay_s: float = 0.0, context_length: int = 4096
    ) -> None:
        self.name = name
        self.reply = reply
        self.token_delay_s = token_delay_s
        self.context_length = context_length
        self.requests: list[GenerationRequest] = []
        self.forgotten: list[str] = []
        self.closed = False
        self.thread_ids: set[int] = set()
        self.emitted: list[str] = []  # conversation id of each token, in the order generated

    def _tokens(self, text: str) -> list[str]:
        words = text.split(" ")
        return [word + " " for word in words[:-1]] + [words[-1]]

    def count_tokens(self, messages: list[Message]) -> int:
        self.thread_ids.add(threading.get_ident())
        return sum(len(m["content"].split()) + 4 for m in messages) + 2

    def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        words = text.split(" ")
        return text if len(words) <= max_tokens else " ".join(words[:max_tokens])

    def generate(
        self, request: GenerationRequest, cancel: threading.Event, stats: GenerationStats
    ) -> Iterator[str]:
        self.thread_ids.add(threading.get_ident())
        self.requests.append(request)
        text = self.reply(request) if callable(self.reply) else self.reply
        stats.prompt_tokens = self.count_tokens(request.messages)
        for piece in self._tokens(text):
            if cancel.is_set():
                stats.finish_reason = "cancelled"
                return
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            stats.completion_tokens += 1
            self.emitted.append(request.conversation_id)
            yield piece

    def forget(self, conversation_id: str) -> None:
        self.forgotten.append(conversation_id)

    def close(self) -> None:
        self.closed = True


def make_service(
    tmp_path: Path,
    reply: Reply = "Hello from the scripted engine.",
    *,
    token_delay_s: float = 0.0,
    models: dict[str, Reply] | None = None,
    context_length: int = 4096,
    **overrides: object,
) -> ChatService:
    """A ChatService over scripted engines; `models` registers extra names (each its own reply).

    Extra models are registered in a real models file pointing at the embedded GGUF path (the
    scripted engine never reads it), so `/model` switching works exactly as in production.
    `service.engines[name]` is the engine once that model has loaded.
    """
    settings: CoreSettings = load_core_settings(data_dir=tmp_path / "data", **overrides)
    replies: dict[str, Reply] = {settings.default_model: reply, **(models or {})}
    engines: dict[str, ScriptedEngine] = {}

    def factory(entry: ModelEntry, _settings: CoreSettings) -> ScriptedEngine:
        engine = ScriptedEngine(
            entry.name,
            replies.get(entry.name, f"[{entry.name}]"),
            token_delay_s=token_delay_s,
            context_length=context_length,
        )
        engines[entry.name] = engine
        return engine

    service = ChatService(settings, engine_factory=factory)
    for name in models or {}:
        service.registry.add(
            name, service.registry.get(settings.default_model).path, description=f"scripted {name}"
        )
    service.engines = engines  # type: ignore[attr-defined]
    return service
