"""Model handles: one async interface for a loaded model, whatever runs it.

`ModelPool` gives the service a `LoadedModel` and the service never asks which kind it holds:
- `LocalModel` wraps a local engine (llama.cpp, test engines) and runs every call into it on the
  shared compute thread (`core.compute`), except tokenizer work marked `@thread_safe`;
- `RemoteModel` wraps a remote engine (`core.engines.remote`), whose methods are coroutines
  already: it calls them here, on the asyncio side.

The pool picks the class once, from the registry entry (`LoadedModel.for_entry`), and the
engine the factory builds must be of that kind. The pool counts a handle's `users` and closes
it only after the last one; once closed, every use raises `EngineClosed` instead of reaching
freed llama.cpp memory (or a closed connection pool).
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TypeVar

from core.compute import close_engine, compute_thread, generate
from core.engines.base import (
    Engine,
    GenerationRequest,
    GenerationStats,
    LocalEngine,
    Message,
    RemoteEngine,
    is_local,
    is_remote,
    is_thread_safe,
    kind_of,
)
from core.errors import EngineClosed
from core.registry import ModelEntry

T = TypeVar("T")
FileKey = tuple[int, int, int]  # (inode, size, mtime_ns) of a model file
log = logging.getLogger(__name__)


class LoadedModel(ABC):
    """One loaded model, as the service and the pool use it."""

    def __init__(
        self, name: str, path: Path | None = None, file_key: FileKey | None = None, *, source: object = None
    ) -> None:
        self.name = name
        self.path = path  # the file it was loaded from: a re-registered name reloads
        self.file_key = file_key  # that file's identity when loaded: a replaced file reloads
        self.source = source  # a remote entry's endpoints and model: a changed entry reloads
        self.users = 0
        self.closed = False

    @staticmethod
    def for_entry(entry: ModelEntry, file_key: FileKey | None, source: object = None) -> LoadedModel:
        """An empty handle of the kind the registry entry names (load it with `load`)."""
        kind = RemoteModel if entry.is_remote else LocalModel
        return kind(entry.name, entry.path, file_key, source=source)

    @abstractmethod
    async def load(self, factory: Callable[[], Engine]) -> Engine:
        """Build the engine with `factory`; a TypeError if it is not of this handle's kind."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """The engine's context window in tokens (`EngineClosed` once unloaded)."""

    @abstractmethod
    async def count_tokens(self, messages: list[Message]) -> int:
        """Prompt length in tokens once the chat template is applied."""

    @abstractmethod
    async def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` that is at most (about) `max_tokens` tokens."""

    @abstractmethod
    def stream(self, request: GenerationRequest, stats: GenerationStats) -> AsyncGenerator[str, None]:
        """Generate, yielding pieces here. Closing the iterator (or cancelling its consumer)
        stops the request."""

    @abstractmethod
    async def forget(self, conversation_id: str) -> None:
        """Drop what the engine keeps for the conversation (its KV cache)."""

    def backpressure_s(self) -> float:
        """How long the servers asked us to wait before the next request (0 for local engines)."""
        return 0.0

    @abstractmethod
    async def close(self) -> None:
        """Free the engine; later uses raise `EngineClosed`. Never raises for a failed close."""


def _wrong_kind(engine: object, wanted: str) -> TypeError:
    return TypeError(f"the engine built is a {kind_of(engine)} engine, but the registry entry is {wanted}")


class LocalModel(LoadedModel):
    """A model computed on this machine: every engine call runs on the compute thread."""

    engine: LocalEngine | None = None

    def require_engine(self) -> LocalEngine:
        """The loaded engine, or `EngineClosed` (never None) once the model was unloaded."""
        if self.closed or self.engine is None:
            raise EngineClosed(self.name)
        return self.engine

    async def load(self, factory: Callable[[], Engine]) -> LocalEngine:
        """Build the engine on the compute thread: a local model is read there."""
        engine = await compute_thread().call(factory)
        if not is_local(engine):
            raise _wrong_kind(engine, "local")
        self.engine = engine
        return engine

    @property
    def context_length(self) -> int:
        return self.require_engine().context_length

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run a method of the engine on the compute thread (thread-safe ones at once)."""
        # Checked when posted: a close posted later runs after this call (the inbox is FIFO).
        if self.closed:
            raise EngineClosed(self.name)
        if is_thread_safe(fn):  # tokenizer work: no need to wait for the current decode step
            return fn(*args)
        return await compute_thread().call(fn, *args)

    async def count_tokens(self, messages: list[Message]) -> int:
        return await self.call(self.require_engine().count_tokens, messages)

    async def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        return await self.call(self.require_engine().truncate_to_tokens, text, max_tokens)

    async def forget(self, conversation_id: str) -> None:
        await self.call(self.require_engine().forget, conversation_id)

    async def stream(self, request: GenerationRequest, stats: GenerationStats) -> AsyncGenerator[str, None]:
        """A job's cancel flag is set when this closes, and the compute thread drops it before its
        next token (this waits until it has)."""
        engine = self.require_engine()
        async with contextlib.aclosing(generate(engine, request, stats)) as pieces:
            async for piece in pieces:
                yield piece

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        engine, self.engine = self.engine, None
        if engine is not None:
            await close_engine(engine)


class RemoteModel(LoadedModel):
    """A model on inference servers: the engine's coroutines run here, never on the compute thread."""

    engine: RemoteEngine | None = None

    def require_engine(self) -> RemoteEngine:
        """The loaded engine, or `EngineClosed` (never None) once the model was unloaded."""
        if self.closed or self.engine is None:
            raise EngineClosed(self.name)
        return self.engine

    async def load(self, factory: Callable[[], Engine]) -> RemoteEngine:
        """Build the engine here: nothing to read, and no reason to wait for a decode step."""
        engine = factory()
        if not is_remote(engine):
            raise _wrong_kind(engine, "remote")
        self.engine = engine
        return engine

    @property
    def context_length(self) -> int:
        return self.require_engine().context_length

    async def count_tokens(self, messages: list[Message]) -> int:
        return await self.require_engine().count_tokens(messages)

    async def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        return await self.require_engine().truncate_to_tokens(text, max_tokens)

    async def forget(self, conversation_id: str) -> None:
        await self.require_engine().forget(conversation_id)

    async def stream(self, request: GenerationRequest, stats: GenerationStats) -> AsyncGenerator[str, None]:
        """Closing this closes the request's stream, so the server stops generating."""
        engine = self.require_engine()
        async with contextlib.aclosing(engine.stream(request, stats)) as pieces:
            async for piece in pieces:
                yield piece

    def backpressure_s(self) -> float:
        if self.closed or self.engine is None:
            return 0.0
        return self.engine.backpressure_s()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        engine, self.engine = self.engine, None
        if engine is None:
            return
        try:
            await engine.close()
        except Exception:  # the model is being dropped anyway
            log.exception("closing model %s failed", self.name)
