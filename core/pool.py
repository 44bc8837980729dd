"""The pool of loaded models (`ModelPool`): loaded on first use, least recently used unloaded over the cap.

Each model handle (`core.handles.LoadedModel`, local or remote as the registry entry says) counts
the requests using it, and nothing in use is ever closed: a model over the cap waits for its last
user (the cap may be exceeded meanwhile), and a model whose registration or file changed is
*retired* — new requests get a freshly loaded handle while the old one finishes its replies and
is closed after the last. A file counts as changed when its (inode, size, mtime) changes, so a
GGUF replaced on disk (written elsewhere and renamed over) reloads. A remote entry (endpoint URLs)
counts as changed when its URLs, served model name or key variable change.

A model that fails to load raises `ModelLoadError` and leaves the already-loaded ones alone, so a
bad file in the registry never takes the bot down. The failure is remembered for
`LOAD_RETRY_S` (or until the file changes), so a broken model is not re-read from disk on the
shared compute thread for every message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from core.engines.base import Engine
from core.errors import EngineClosed, ModelLoadError
from core.handles import FileKey, LoadedModel
from core.registry import ModelEntry, ModelRegistry
from core.settings import CoreSettings

EngineFactory = Callable[[ModelEntry, CoreSettings], Engine]
LOAD_RETRY_S = 60.0  # how long a failed load is remembered before the file is tried again
log = logging.getLogger(__name__)


def default_engine_factory(entry: ModelEntry, settings: CoreSettings) -> Engine:
    if entry.is_remote:
        from core.engines.remote import OpenAIEngine

        return OpenAIEngine.from_entry(entry, settings)
    from core.engines.llama import LlamaEngine  # llama_cpp is only imported when a model loads

    return LlamaEngine.load(entry, settings)


def remote_source(entry: ModelEntry) -> tuple[object, ...] | None:
    """What identifies a remote entry's engine: a change to any of it loads a new one."""
    if not entry.is_remote:
        return None
    return (tuple(entry.urls), entry.remote_model, entry.api_key_env, entry.context_length)


def file_key(path: Path | None) -> FileKey | None:
    """The file's identity: a file replaced by rename gets a new inode, one rewritten in place a
    new size or mtime. None when it cannot be read (or for a remote model)."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


@dataclass
class _LoadFailure:
    path: Path | None
    key: FileKey | None
    at: float
    reason: str


class ModelPool:
    def __init__(
        self, registry: ModelRegistry, settings: CoreSettings, factory: EngineFactory | None = None
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.factory = factory or default_engine_factory
        self.load_retry_s = LOAD_RETRY_S
        self.clock: Callable[[], float] = time.monotonic
        self._handles: OrderedDict[str, LoadedModel] = OrderedDict()  # current ones, LRU first
        self._retired: set[LoadedModel] = set()  # replaced while in use: closed after their last user
        self._failures: dict[str, _LoadFailure] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}

    @property
    def loaded(self) -> list[str]:
        return list(self._handles)

    @asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[LoadedModel]:
        """Hold model `name` loaded for the body (it is not closed while in use)."""
        handle = await self._acquire(name)  # counted as in use before anything is evicted
        try:
            await self._evict()
            yield handle
        finally:
            await self._release(handle)

    async def _acquire(self, name: str) -> LoadedModel:
        entry = self.registry.get(name)  # UnknownModel lists the valid names
        async with self._load_locks.setdefault(name, asyncio.Lock()):
            key = file_key(entry.path)
            handle = self._handles.get(name)
            if handle is not None and self._stale(handle, entry, key):
                log.info("model %s changed on disk or in the registry: loading it again", name)
                await self.unload(name)
                handle = None
            if handle is None:
                handle = await self._load(entry, key)
                self._handles[name] = handle
            self._handles.move_to_end(name)
            handle.users += 1  # no await from here to the caller's try: it is always released
        return handle

    async def _load(self, entry: ModelEntry, key: FileKey | None) -> LoadedModel:
        failure = self._failures.get(entry.name)
        if failure is not None:
            same_file = (failure.path, failure.key) == (entry.path, key)
            if same_file and self.clock() - failure.at < self.load_retry_s:
                raise ModelLoadError(entry.name, failure.reason)
            del self._failures[entry.name]
        handle = LoadedModel.for_entry(entry, key, remote_source(entry))
        try:
            await handle.load(lambda: self.factory(entry, self.settings))
        except Exception as error:  # any loader failure becomes a clear user message
            await handle.close()
            self._failures[entry.name] = _LoadFailure(entry.path, key, self.clock(), _reason(error))
            log.warning("model %s could not be loaded: %s", entry.name, _reason(error))
            raise ModelLoadError(entry.name, _reason(error)) from error
        return handle

    @staticmethod
    def _stale(handle: LoadedModel, entry: ModelEntry, key: FileKey | None) -> bool:
        """Re-registering a name with a new file, or replacing its file, loads the new file. A file
        that vanished keeps the loaded copy (it is still in memory)."""
        if handle.source != remote_source(entry):
            return True
        return handle.path != entry.path or (key is not None and handle.file_key != key)

    async def _release(self, handle: LoadedModel) -> None:
        handle.users -= 1
        if handle.users == 0 and handle in self._retired:
            self._retired.discard(handle)
            await handle.close()
        await self._evict()

    async def _evict(self) -> None:
        """Close least recently used models over the cap; those in use stay until released."""
        for name, handle in list(self._handles.items()):
            if len(self._handles) <= self.settings.max_loaded_models:
                break
            if handle.users == 0 and self._handles.get(name) is handle:
                del self._handles[name]
                await handle.close()

    async def unload(self, name: str) -> None:
        """Drop `name` from the pool: closed now if idle, else after its last user."""
        handle = self._handles.pop(name, None)
        if handle is None:
            return
        if handle.users:
            self._retired.add(handle)
        else:
            await handle.close()

    async def forget(self, conversation_id: str) -> None:
        """Drop what every loaded model keeps for the conversation (its KV cache)."""
        for handle in [*self._handles.values(), *self._retired]:
            try:
                await handle.forget(conversation_id)
            except EngineClosed:  # unloaded meanwhile: nothing left to forget
                pass

    def memory(self) -> dict[str, dict[str, int]]:
        """Loaded models' memory in bytes (metrics): the weights file (mapped) and, for a local
        model, the KV states its prompt cache keeps in host memory."""
        shown: dict[str, dict[str, int]] = {}
        for name, handle in self._handles.items():
            parts = shown[name] = {"weights": handle.file_key[1] if handle.file_key else 0}
            cache = getattr(getattr(handle, "engine", None), "prompt_cache", None)
            if isinstance(size := getattr(cache, "size_bytes", None), int):
                parts["prompt_cache"] = size
        return shown

    def endpoint_health(self) -> dict[str, list[tuple[str, bool]]]:
        """Loaded remote models' endpoints: (url, up) each (metrics, /readyz)."""
        health: dict[str, list[tuple[str, bool]]] = {}
        for name, handle in self._handles.items():
            endpoints = getattr(getattr(handle, "engine", None), "endpoints", None)
            if endpoints is not None:
                health[name] = [(endpoint.url, endpoint.up) for endpoint in endpoints.all]
        return health

    def load_failure(self, name: str) -> str | None:
        """Why model `name` failed to load lately (it is not tried again for a while), else None."""
        failure = self._failures.get(name)
        return failure.reason if failure is not None else None

    def backpressure_s(self, name: str) -> float:
        """Seconds until model `name`'s servers take requests again, as they said (429/503
        Retry-After); 0 for a local model or one not loaded."""
        handle = self._handles.get(name)
        return handle.backpressure_s() if handle is not None else 0.0

    async def close(self) -> None:
        handles = [*self._handles.values(), *self._retired]
        self._handles.clear()
        self._retired.clear()
        for handle in handles:
            await handle.close()


def _reason(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
