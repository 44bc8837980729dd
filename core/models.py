"""Loaded models: lazily loaded on first use, least-recently-used unloaded over the cap.

A model that fails to load raises `ModelLoadError` and leaves the already-loaded ones alone,
so a bad file in the registry never takes the bot down.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from core.engines.base import Engine
from core.errors import ModelLoadError
from core.registry import ModelEntry, ModelRegistry
from core.settings import CoreSettings
from core.worker import EngineWorker

EngineFactory = Callable[[ModelEntry, CoreSettings], Engine]


def default_engine_factory(entry: ModelEntry, settings: CoreSettings) -> Engine:
    from core.engines.llama import LlamaEngine  # llama_cpp is only imported when a model loads

    return LlamaEngine.load(entry, settings)


class ModelPool:
    def __init__(
        self, registry: ModelRegistry, settings: CoreSettings, factory: EngineFactory | None = None
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.factory = factory or default_engine_factory
        self._workers: OrderedDict[str, EngineWorker] = OrderedDict()
        self._in_use: dict[str, int] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}

    @property
    def loaded(self) -> list[str]:
        return list(self._workers)

    @asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[EngineWorker]:
        """Hold model `name` loaded for the body (it is not unloaded while in use)."""
        worker = await self._get(name)
        self._in_use[name] = self._in_use.get(name, 0) + 1
        try:
            yield worker
        finally:
            self._in_use[name] -= 1
            await self._evict()

    async def _get(self, name: str) -> EngineWorker:
        entry = self.registry.get(name)  # UnknownModel lists the valid names
        async with self._load_locks.setdefault(name, asyncio.Lock()):
            worker = self._workers.get(name)
            if worker is None or self._stale(worker, entry):
                if worker is not None:
                    await self.unload(name)
                worker = EngineWorker(name, entry.path)
                try:
                    await worker.load(lambda: self.factory(entry, self.settings))
                except Exception as error:  # any loader failure becomes a clear user message
                    await worker.close()
                    raise ModelLoadError(name, _reason(error)) from error
                self._workers[name] = worker
            self._workers.move_to_end(name)
        await self._evict()
        return worker

    @staticmethod
    def _stale(worker: EngineWorker, entry: ModelEntry) -> bool:
        """Re-registering a name with a new file loads the new file."""
        return worker.path != entry.path

    async def _evict(self) -> None:
        for name in list(self._workers):
            if len(self._workers) <= self.settings.max_loaded_models:
                break
            if self._in_use.get(name, 0) == 0:
                await self.unload(name)

    async def unload(self, name: str) -> None:
        worker = self._workers.pop(name, None)
        if worker is not None:
            await worker.close()

    async def each_loaded(self, fn_name: str, *args: object) -> None:
        """Call an engine method on every loaded model (e.g. `forget`)."""
        for worker in list(self._workers.values()):
            if worker.engine is not None:
                await worker.call(getattr(worker.engine, fn_name), *args)

    async def close(self) -> None:
        for name in list(self._workers):
            await self.unload(name)


def _reason(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
