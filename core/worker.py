"""One thread per loaded model: every call into an engine happens there.

`llama_cpp.Llama` objects are not thread-safe, so the worker owns the engine from load to
close; asyncio code talks to it through `call` and `stream`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from core.engines.base import Engine, GenerationRequest, GenerationStats

T = TypeVar("T")
_END = object()


class EngineWorker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")
        self.engine: Engine | None = None

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def load(self, factory: Callable[[], Engine]) -> Engine:
        self.engine = await self.call(factory)
        return self.engine

    async def stream(self, request: GenerationRequest, stats: GenerationStats) -> AsyncIterator[str]:
        """Run the engine's generator on the worker thread, yielding its pieces here.

        Closing this async iterator (or cancelling its consumer) sets the cancel flag, which
        the engine checks between tokens, and waits for the thread to stop.
        """
        assert self.engine is not None, "load() first"
        engine = self.engine
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def produce() -> None:
            try:
                for piece in engine.generate(request, cancel, stats):
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
                    if cancel.is_set():
                        break
            except BaseException as error:  # handed to the consumer
                loop.call_soon_threadsafe(pieces.put_nowait, error)
            finally:
                loop.call_soon_threadsafe(pieces.put_nowait, _END)

        done = loop.run_in_executor(self._executor, produce)
        try:
            while True:
                item = await pieces.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            cancel.set()
            await asyncio.shield(done)

    async def close(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            await self.call(engine.close)
        self._executor.shutdown(wait=False)
