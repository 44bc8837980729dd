"""One thread per loaded model: every call into an engine happens there.

`llama_cpp.Llama` objects are not thread-safe, so the worker's thread owns the engine from load
to close. It runs a small loop: handle calls (load, count tokens, forget), admit new requests,
then advance every active request by one token — in one batched decode for engines that offer
`begin/step/end` (the llama.cpp engine), or one `next()` each for plain generator engines.
asyncio code talks to it through `call` and `stream`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from core.engines.base import Engine, GenerationRequest, GenerationStats

T = TypeVar("T")
_END = object()


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    stats: GenerationStats
    cancel: threading.Event
    emit: Callable[[object], None]  # thread-safe hand-over of a piece, an error or _END
    state: Any = None  # the engine's Generation, or a plain generator
    pieces: Iterator[str] | None = field(default=None, repr=False)


class EngineWorker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.engine: Engine | None = None
        self._inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self._thread.start()

    # -- asyncio side ----------------------------------------------------------------------
    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the worker thread (between decode steps)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._inbox.put(("call", fn, args, loop, future))
        return await future

    async def load(self, factory: Callable[[], Engine]) -> Engine:
        engine = await self.call(factory)
        self.engine = engine
        return engine

    async def stream(self, request: GenerationRequest, stats: GenerationStats) -> AsyncIterator[str]:
        """Generate on the worker thread, yielding pieces here.

        Closing this iterator (or cancelling its consumer) sets the job's cancel flag; the
        thread drops the job before its next token, and we wait until it has.
        """
        assert self.engine is not None, "load() first"
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[object] = asyncio.Queue()
        finished = loop.create_future()

        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(_deliver, pieces, finished, item)
            except RuntimeError:  # the event loop is gone (interpreter shutting down)
                pass

        job = _Job(request, stats, threading.Event(), emit)
        self._inbox.put(("job", job))
        try:
            while True:
                item = await pieces.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            job.cancel.set()
            self._inbox.put(("wake",))
            await asyncio.shield(finished)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._inbox.put(("stop", loop, future))
        await future
        self.engine = None

    # -- worker thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        active: list[_Job] = []
        while True:
            block = not active
            while True:
                try:
                    message = self._inbox.get(block=block)
                except queue.Empty:
                    break
                block = False
                kind = message[0]
                if kind == "call":
                    _, fn, args, loop, future = message
                    try:
                        result = fn(*args)
                    except BaseException as error:  # handed to the caller
                        loop.call_soon_threadsafe(_settle, future, None, error)
                    else:
                        loop.call_soon_threadsafe(_settle, future, result, None)
                elif kind == "job":
                    self._admit(message[1], active)
                elif kind == "stop":
                    for job in active:
                        self._finish(job, error=None, failed=True)
                    if self.engine is not None:
                        self.engine.close()
                    _, loop, future = message
                    loop.call_soon_threadsafe(_settle, future, None, None)
                    return
            for job in [job for job in active if job.cancel.is_set()]:
                job.stats.finish_reason = "cancelled"
                active.remove(job)
                self._finish(job)
            if active:
                self._advance(active)

    def _admit(self, job: _Job, active: list[_Job]) -> None:
        engine = self.engine
        try:
            if hasattr(engine, "step"):
                job.state = engine.begin(job.request, job.stats)  # type: ignore[union-attr]
            else:
                job.pieces = iter(engine.generate(job.request, job.cancel, job.stats))  # type: ignore[union-attr]
        except BaseException as error:
            job.emit(error)
            job.emit(_END)
            return
        active.append(job)

    def _advance(self, active: list[_Job]) -> None:
        engine = self.engine
        if hasattr(engine, "step"):
            try:
                results = engine.step([job.state for job in active])  # type: ignore[union-attr]
            except BaseException as error:  # a failed decode fails the whole batch
                for job in active:
                    self._finish(job, error=error, failed=True)
                active.clear()
                return
            for job, (text, finished) in list(zip(active, results)):
                if text:
                    job.emit(text)
                if finished:
                    active.remove(job)
                    self._finish(job)
            return
        for job in list(active):
            try:
                job.emit(next(job.pieces))  # type: ignore[arg-type]
            except StopIteration:
                active.remove(job)
                self._finish(job)
            except BaseException as error:
                active.remove(job)
                self._finish(job, error=error)

    def _finish(self, job: _Job, error: BaseException | None = None, failed: bool = False) -> None:
        if job.state is not None:
            self.engine.end(job.state, failed=failed or error is not None)  # type: ignore[union-attr]
        elif job.pieces is not None and hasattr(job.pieces, "close"):
            job.pieces.close()  # type: ignore[union-attr]
        if error is not None:
            job.emit(error)
        job.emit(_END)


def _deliver(pieces: asyncio.Queue[object], finished: asyncio.Future[None], item: object) -> None:
    pieces.put_nowait(item)
    if item is _END and not finished.done():
        finished.set_result(None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
