"""The compute thread: every call into an engine happens there.

`llama_cpp.Llama` objects are not thread-safe, so one thread owns every engine from load to
close. It runs a small loop: handle calls (load, count tokens, forget, close), admit new
requests, then advance every active request by one token — in one batched decode per engine for
engines that offer `begin/step/end` (the llama.cpp engine), or one `next()` each for plain
generator engines. asyncio code talks to it through `EngineWorker.call` and `.stream`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from core.engines.base import Engine, GenerationRequest, GenerationStats

T = TypeVar("T")
_END = object()


@dataclass(eq=False)
class _Job:
    engine: Engine
    request: GenerationRequest
    stats: GenerationStats
    cancel: threading.Event
    emit: Callable[[object], None]  # thread-safe hand-over of a piece, an error or _END
    state: Any = None  # the engine's Generation, or a plain generator
    pieces: Iterator[str] | None = field(default=None, repr=False)


class ComputeThread:
    """The one thread that runs every engine.

    llama.cpp parallelises each decode with OpenMP, and every OS thread that calls into it gets an
    OpenMP team of its own. Two teams on a small machine make libgomp stop spinning between
    decodes, which cut decode speed from ~60 to ~23 tokens/s here, even while the other team was
    idle. So all models share this thread (and one team); requests for different models are
    advanced in turn.
    """

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="lorabot-compute", daemon=True)
        self._thread.start()

    def post(self, *message: object) -> None:
        self._inbox.put(message)

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the compute thread (between decode steps)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.post("call", fn, args, loop, future)
        return await future

    def run(self, fn: Callable[..., T], *args: object) -> T:
        """Blocking version of `call`, for synchronous code (e.g. `lorabot eval` scoring a GGUF
        with llama-cpp-python directly): it too must not start a second OpenMP team."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.post("sync", fn, args, future)
        return future.result()

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
                self._handle(message, active)
            for job in [job for job in active if job.cancel.is_set()]:
                job.stats.finish_reason = "cancelled"
                active.remove(job)
                self._finish(job)
            engines = list(dict.fromkeys(job.engine for job in active))
            for engine in engines:
                self._advance(engine, [job for job in active if job.engine is engine], active)

    def _handle(self, message: tuple, active: list[_Job]) -> None:
        kind = message[0]
        if kind == "call":
            _, fn, args, loop, future = message
            try:
                result = fn(*args)
            except BaseException as error:  # handed to the caller
                _resolve(loop, future, None, error)
            else:
                _resolve(loop, future, result, None)
        elif kind == "sync":
            _, fn, args, future = message
            try:
                future.set_result(fn(*args))
            except BaseException as error:  # handed to the caller
                future.set_exception(error)
        elif kind == "job":
            self._admit(message[1], active)
        elif kind == "close":
            _, engine, loop, future = message
            for job in [job for job in active if job.engine is engine]:
                active.remove(job)
                self._finish(job, failed=True)
            try:
                engine.close()
            finally:
                _resolve(loop, future, None, None)

    def _admit(self, job: _Job, active: list[_Job]) -> None:
        engine = job.engine
        try:
            if hasattr(engine, "step"):
                job.state = engine.begin(job.request, job.stats)  # type: ignore[attr-defined]
            else:
                job.pieces = iter(engine.generate(job.request, job.cancel, job.stats))
        except BaseException as error:
            job.emit(error)
            job.emit(_END)
            return
        active.append(job)

    def _advance(self, engine: Engine, jobs: list[_Job], active: list[_Job]) -> None:
        """One token for each of `engine`'s jobs: one batched decode, or one next() each."""
        if hasattr(engine, "step"):
            try:
                results = engine.step([job.state for job in jobs])  # type: ignore[attr-defined]
            except BaseException as error:  # a failed decode fails the whole batch
                for job in jobs:
                    active.remove(job)
                    self._finish(job, error=error, failed=True)
                return
            for job, (text, finished) in zip(jobs, results):
                if text:
                    job.emit(text)
                if finished:
                    active.remove(job)
                    self._finish(job)
            return
        for job in jobs:
            try:
                job.emit(next(job.pieces))  # type: ignore[arg-type]
            except StopIteration:
                active.remove(job)
                self._finish(job)
            except BaseException as error:
                active.remove(job)
                self._finish(job, error=error)

    @staticmethod
    def _finish(job: _Job, error: BaseException | None = None, failed: bool = False) -> None:
        if job.state is not None:
            job.engine.end(job.state, failed=failed or error is not None)  # type: ignore[attr-defined]
        elif job.pieces is not None and hasattr(job.pieces, "close"):
            job.pieces.close()  # type: ignore[union-attr]
        if error is not None:
            job.emit(error)
        job.emit(_END)


_compute: ComputeThread | None = None
_compute_lock = threading.Lock()


def compute_thread() -> ComputeThread:
    """The process's compute thread, started on first use."""
    global _compute
    with _compute_lock:
        if _compute is None:
            _compute = ComputeThread()
        return _compute


class EngineWorker:
    """One loaded model, run on the shared compute thread; asyncio code talks to it here."""

    def __init__(self, name: str, path: Path | None = None) -> None:
        self.name = name
        self.path = path  # the file it was loaded from: a re-registered name reloads
        self.engine: Engine | None = None
        self._compute = compute_thread()

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        return await self._compute.call(fn, *args)

    async def load(self, factory: Callable[[], Engine]) -> Engine:
        engine = await self.call(factory)
        self.engine = engine
        return engine

    async def stream(self, request: GenerationRequest, stats: GenerationStats) -> AsyncIterator[str]:
        """Generate on the compute thread, yielding pieces here.

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

        job = _Job(self.engine, request, stats, threading.Event(), emit)
        self._compute.post("job", job)
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
            self._compute.post("wake")
            await asyncio.shield(finished)

    async def close(self) -> None:
        if self.engine is None:
            return
        engine, self.engine = self.engine, None
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._compute.post("close", engine, loop, future)
        await future


def _deliver(pieces: asyncio.Queue[object], finished: asyncio.Future[None], item: object) -> None:
    pieces.put_nowait(item)
    if item is _END and not finished.done():
        finished.set_result(None)


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # that event loop has closed
        pass
