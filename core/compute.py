"""The compute thread: every call into a local engine happens there.

`llama_cpp.Llama` objects are not thread-safe, so one thread owns every local engine from load to
close. It runs a small loop: handle calls (load, count tokens, forget, close), admit new
requests, then advance every active request by one step — one batched decode per engine for
engines that offer `begin/step/end` (the llama.cpp engine: a token for each reply being generated
plus a chunk of the prompts still being read), or one `next()` each for plain generator engines.
What a step produced goes to asyncio in one hand-over per event loop, not one per piece.
asyncio code reaches it through `generate` and `close_engine` here, or `ComputeThread.call`;
the service only sees `core.handles.LocalModel`. Remote engines never reach this thread.

Faults never leave a caller waiting: an engine error fails only the requests it touched (with
`EngineFailed`, a user-facing `ChatError`) and the loop goes on; if the thread dies anyway, it
fails everything it held or had queued, and `compute_thread()` starts a new one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from core.engines.base import BatchedEngine, GenerationRequest, GenerationStats, LocalEngine, is_batched
from core.errors import ChatError, EngineClosed, EngineFailed

T = TypeVar("T")


class _End:
    """The last item a job's consumer gets (after its error, if any)."""


_END = _End()
_Item = str | BaseException | _End  # what a job's consumer gets: pieces, then an error and/or _END
_Post = tuple[Any, ...]  # a message to the thread: ("call" | "sync" | "job" | "close" | "wake", ...)
log = logging.getLogger(__name__)

# llama.cpp's CPU threads are an OpenMP team, and by default OpenMP threads wait by spinning (for
# the next decode, and at each of the hundreds of barriers inside one). When the cores are shared
# (the event loop, the bots, other processes) a spinning thread burns the time slice that the
# thread it waits for needs: on this project's 2-core machine under load, 8 replies at once ran at
# ~6 tokens/s spinning and ~50-75 passive (docs/engine.md). libgomp reads this once, when it is
# loaded (at `import llama_cpp`, which is lazy everywhere in lorabot), so it is set here; an
# explicit OMP_WAIT_POLICY in the environment wins.
OMP_WAIT_POLICY_BEFORE = os.environ.get("OMP_WAIT_POLICY")  # the user's own, for child processes
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Passive alone also sleeps at each of the hundreds of barriers *inside* one decode, waking up
# a few microseconds later: one reply decoded at 32 tokens/s here instead of 111 spinning. A
# short spin before sleeping (GOMP_SPINCOUNT, libgomp's; ~0.1 ms here) keeps a decode's barriers
# fast and still sleeps between decodes: 102 tokens/s, and no CPU used while idle (docs/engine.md).
GOMP_SPINCOUNT_BEFORE = os.environ.get("GOMP_SPINCOUNT")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# Requests that arrive together reach this thread a few milliseconds apart (each passes through
# the history store and the queue first). When a request wakes the idle thread, it waits until
# no other one has come for BURST_GAP_S (at most BURST_MAX_S) before the first decode, so that a
# burst's prompts are read together instead of the first alone while the others wait for it.
BURST_GAP_S = 0.004
BURST_MAX_S = 0.030
# Work for idle moments (an engine reading the next turn's opening ahead) waits this long for a
# request to come first: a user's next question, or another user's that was on its way as the
# last reply ended, should not wait for that decode.
IDLE_WORK_AFTER_S = 0.050


@dataclass(eq=False)
class _Job:
    engine: LocalEngine
    request: GenerationRequest
    stats: GenerationStats
    cancel: threading.Event
    loop: asyncio.AbstractEventLoop  # the consumer's: items reach `queue` there, in order
    queue: asyncio.Queue[_Item] = field(repr=False)  # pieces, then an error and/or _END
    finished: asyncio.Future[None] = field(repr=False)  # set once _END is delivered
    state: object = None  # a batched engine's state for this request (its Generation)
    pieces: Iterator[str] = field(default_factory=lambda: iter(()), repr=False)  # a generator engine's reply
    batched: BatchedEngine | None = None  # `engine` when driven through begin/step/end (its declared kind)


def _failure(error: BaseException) -> ChatError:
    """What a request's consumer sees when the engine raised: a ChatError with a clear message."""
    if isinstance(error, ChatError):
        return error
    failure = EngineFailed(f"{type(error).__name__}: {error}")
    failure.__cause__ = error
    return failure


def _engine_name(engine: object) -> str:
    return str(getattr(engine, "name", type(engine).__name__))


class ComputeThread:
    """The one thread that runs every engine.

    llama.cpp parallelises each decode with OpenMP, and every OS thread that calls into it gets an
    OpenMP team of its own. Two teams on a small machine make libgomp stop spinning between
    decodes, which cut decode speed from ~60 to ~23 tokens/s here, even while the other team was
    idle. So all models share this thread (and one team); requests for different models are
    advanced in turn.
    """

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[_Post] = queue.SimpleQueue()
        self._outbox: list[tuple[_Job, _Item]] = []  # items for consumers, sent by _flush()
        self._lock = threading.Lock()  # orders post() against the thread's death
        self._dead = False
        # batched engines with work for idle moments (`read_ahead`), in the order they got it
        self._idle_work: dict[BatchedEngine, None] = {}
        self._thread = threading.Thread(target=self._run, name="lorabot-compute", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return not self._dead and self._thread.is_alive()

    def post(self, *message: object) -> None:
        with self._lock:
            if self._dead:
                raise EngineFailed("the compute thread has stopped")
            self._inbox.put(message)

    def wake(self) -> None:
        """Make the loop look at cancel flags now; a dead thread has already ended every job."""
        with contextlib.suppress(EngineFailed):
            self.post("wake")

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

    def join(self, timeout: float | None = None) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        active: list[_Job] = []
        try:
            while True:
                try:
                    self._loop(active)
                except Exception as error:  # a fault outside one job: fail what was in flight, go on
                    log.exception(
                        "compute thread: unexpected error; failing %d running requests", len(active)
                    )
                    self._fail_all(active, _failure(error))
                    self._flush()
        except BaseException as error:  # the thread ends here: nobody may be left waiting on it
            log.critical(
                "compute thread stopped (%s: %s); a new one starts on the next request",
                type(error).__name__,
                error,
                exc_info=error,
            )
            self._die(active, EngineFailed(f"compute thread stopped: {type(error).__name__}: {error}"))

    def _loop(self, active: list[_Job]) -> None:
        while True:
            self._flush()  # never block (or decode) with items not handed over
            idle = not active
            wait: float | None = IDLE_WORK_AFTER_S if idle and self._idle_work else None
            block = idle
            while True:
                try:
                    message = self._inbox.get(block=block, timeout=wait)
                except queue.Empty:
                    break
                block, wait = False, None
                self._take(message, active)
            if idle and active:  # woken by new requests: let the rest of a burst join them
                deadline = time.monotonic() + BURST_MAX_S
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        message = self._inbox.get(timeout=min(left, BURST_GAP_S))
                    except queue.Empty:
                        break
                    self._take(message, active)
            self._flush()  # e.g. requests that could not start: told before the next decode
            if not active and self._idle_work:  # nothing waits: read ahead, one decode, then look again
                self._read_ahead()
                continue
            for job in [job for job in active if job.cancel.is_set()]:
                job.stats.finish_reason = "cancelled"
                active.remove(job)
                self._finish(job)
            engines = list(dict.fromkeys(job.engine for job in active))
            for engine in engines:
                jobs = [job for job in active if job.engine is engine]
                try:
                    self._advance(engine, jobs, active)
                except Exception as error:  # only this engine's requests fail
                    log.exception("model %s: advancing %d requests failed", _engine_name(engine), len(jobs))
                    self._fail_all([job for job in jobs if job in active], _failure(error), active)
                self._flush()  # this engine's step is out before the next engine's runs

    def _read_ahead(self) -> None:
        """One decode of an engine's idle work; an error there is logged and that work dropped
        (no request depends on it)."""
        engine = next(iter(self._idle_work))
        try:
            more = engine.read_ahead()
        except Exception:
            log.warning("model %s: reading ahead failed", _engine_name(engine), exc_info=True)
            more = False
        if not more:
            self._idle_work.pop(engine, None)

    def _take(self, message: _Post, active: list[_Job]) -> None:
        try:
            self._handle(message, active)
        except Exception as error:  # that message's caller gets the error; the loop goes on
            log.exception("compute thread: %r failed", message[0])
            self._fail_message(message, _failure(error))

    def _handle(self, message: _Post, active: list[_Job]) -> None:
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
            self._idle_work.pop(engine, None)
            try:
                for job in [job for job in active if job.engine is engine]:
                    active.remove(job)
                    self._finish(job, error=EngineClosed(_engine_name(engine)))
                engine.close()
            except Exception:  # the model is being dropped anyway: log it and keep serving
                log.exception("closing model %s failed", _engine_name(engine))
            finally:
                _resolve(loop, future, None, None)

    def _admit(self, job: _Job, active: list[_Job]) -> None:
        engine = job.engine
        try:
            if is_batched(engine):
                job.batched = engine
                job.state = engine.begin(job.request, job.stats)
            else:
                job.pieces = iter(engine.generate(job.request, job.cancel, job.stats))
        except BaseException as error:
            log.warning("model %s: could not start a request: %s", _engine_name(engine), error)
            self._emit(job, _failure(error))
            self._emit(job, _END)
            return
        active.append(job)

    def _advance(self, engine: LocalEngine, jobs: list[_Job], active: list[_Job]) -> None:
        """One token for each of `engine`'s jobs: one batched decode, or one next() each."""
        batched = jobs[0].batched  # all of one engine's jobs share its kind
        if batched is not None:
            try:
                results = batched.step([job.state for job in jobs])
            except BaseException as error:  # a failed decode fails the whole batch, nothing else
                name = _engine_name(engine)
                log.error("model %s: decode failed for %d requests: %s", name, len(jobs), error)
                self._fail_all(jobs, _failure(error), active)
                return
            for job, (text, finished) in zip(jobs, results, strict=True):
                if text:
                    self._emit(job, text)
                if finished:
                    active.remove(job)
                    self._finish(job)
            return
        for job in jobs:
            try:
                self._emit(job, next(job.pieces))
            except StopIteration:
                active.remove(job)
                self._finish(job)
            except BaseException as error:
                active.remove(job)
                self._finish(job, error=_failure(error))

    def _fail_all(self, jobs: list[_Job], error: ChatError, active: list[_Job] | None = None) -> None:
        active = jobs if active is None else active
        for job in list(jobs):
            if job in active:
                active.remove(job)
            self._finish(job, error=error)

    def _emit(self, job: _Job, item: _Item) -> None:
        """Queue a piece, an error or `_END` for the job's consumer; `_flush` hands them over."""
        self._outbox.append((job, item))

    def _flush(self) -> None:
        """Hand everything queued to the consumers: one `call_soon_threadsafe` per event loop
        for the whole step (not one per piece per request), each job's items in order."""
        if not self._outbox:
            return
        items, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, _Item]]] = {}
        for job, item in items:
            by_loop.setdefault(job.loop, []).append((job, item))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # that event loop is gone (interpreter shutting down)
                pass

    def _finish(self, job: _Job, error: BaseException | None = None, failed: bool = False) -> None:
        """Release the job's engine state, then tell its consumer: `_END` is always emitted."""
        try:
            if job.batched is not None and job.state is not None:
                job.batched.end(job.state, failed=failed or error is not None)
                self._idle_work[job.batched] = None  # it may have lined up work for idle moments
            elif (close := getattr(job.pieces, "close", None)) is not None:
                close()  # a generator's `finally` runs now, on this thread
        except Exception:  # the reply itself is settled; a failed clean-up must not end the loop
            log.exception("model %s: releasing a request failed", _engine_name(job.engine))
        finally:
            if error is not None:
                self._emit(job, error)
            self._emit(job, _END)

    def _fail_message(self, message: _Post, error: ChatError) -> None:
        kind = message[0]
        if kind == "call":
            _resolve(message[3], message[4], None, error)
        elif kind == "sync" and not message[3].done():
            message[3].set_exception(error)
        elif kind == "job":
            self._emit(message[1], error)
            self._emit(message[1], _END)
        elif kind == "close":
            _resolve(message[2], message[3], None, None)

    def _die(self, active: list[_Job], error: EngineFailed) -> None:
        """Refuse new messages, then fail every request held or queued: nobody waits forever."""
        with self._lock:
            self._dead = True
        for job in list(active):
            with contextlib.suppress(BaseException):  # its _END was queued in _finish's `finally`
                self._finish(job, error=error)
        active.clear()
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                self._flush()  # everything queued so far, these requests' errors and _END included
                return
            if message[0] == "close":  # still free that model's memory
                try:
                    message[1].close()
                except BaseException:
                    log.exception("closing model %s failed", _engine_name(message[1]))
            self._fail_message(message, error)


_compute: ComputeThread | None = None
_compute_lock = threading.Lock()


def compute_thread() -> ComputeThread:
    """The process's compute thread, started on first use and again if it died."""
    global _compute
    with _compute_lock:
        if _compute is not None and not _compute.alive:
            log.warning("the compute thread had stopped; starting a new one")
            _compute.join(timeout=10)  # let it finish failing its requests before another thread runs engines
            _compute = None
        if _compute is None:
            _compute = ComputeThread()
        return _compute


async def generate(
    engine: LocalEngine, request: GenerationRequest, stats: GenerationStats
) -> AsyncGenerator[str, None]:
    """Generate on the compute thread, yielding the pieces here.

    Closing this iterator (or cancelling its consumer) stops the request: the job's cancel flag is
    set and the compute thread drops it before its next token (we wait until it has).
    """
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[_Item] = asyncio.Queue()
    finished: asyncio.Future[None] = loop.create_future()
    job = _Job(engine, request, stats, threading.Event(), loop, pieces, finished)
    compute = compute_thread()
    compute.post("job", job)  # accepted jobs always get _END, even if the thread dies
    try:
        while True:
            item = await pieces.get()
            if isinstance(item, _End):
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        job.cancel.set()
        compute.wake()
        await _ended(finished, compute)


async def close_engine(engine: LocalEngine) -> None:
    """Close `engine` on the compute thread, failing its requests still running (`EngineClosed`)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    try:
        compute_thread().post("close", engine, loop, future)
    except EngineFailed:  # it died between the two lines: the next one frees the model
        compute_thread().post("close", engine, loop, future)
    await future


async def _ended(finished: asyncio.Future[None], compute: ComputeThread) -> None:
    """Wait until the thread has dropped the job (so its slot is free), checking once a second
    that the thread still lives: a dead thread never hands back `_END`, and no one waits forever."""
    while not finished.done():
        await asyncio.wait([finished], timeout=1.0)  # never cancels `finished`, unlike wait_for
        if not compute.alive:
            return


def _deliver(items: list[tuple[_Job, _Item]]) -> None:
    """On the consumers' event loop: one compute step's pieces, errors and ends, in order."""
    for job, item in items:
        job.queue.put_nowait(item)
        if item is _END and not job.finished.done():
            job.finished.set_result(None)


def _resolve(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, error: BaseException | None
) -> None:
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
