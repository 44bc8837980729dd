"""Fault injection around a real engine (the llama.cpp one): failing decodes, `end()` and
`close()` that raise, and a tripwire for any use of a closed engine.

Faults are armed by the test and decided on the compute thread by a predicate, so a test says
*when* a fault fires ("once two replies are generating") instead of guessing with sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.engines.base import Engine
from core.pool import default_engine_factory
from core.registry import ModelEntry
from core.settings import CoreSettings

Fault = Callable[[Any], BaseException | None]  # gets the batch / generation, returns what to raise


class UsedAfterClose(AssertionError):
    """The core called into an engine it had already closed (with llama.cpp: a segfault)."""


class FaultyEngine:
    """Delegates to `inner`; `step`, `end` and `close` raise when their armed fault says so.

    Each fault fires once, then disarms. Any call made after `close()` raises `UsedAfterClose`
    instead of reaching freed llama.cpp memory, so a test fails cleanly rather than crashing.
    """

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name
        self.context_length = inner.context_length
        self.fail_step: Fault | None = None
        self.garble_step: Callable[[Any], bool] | None = None  # decode, then return a malformed result
        self.fail_end: Fault | None = None
        self.fail_close: BaseException | None = None
        self.closed = False
        self.fired: list[str] = []  # which faults went off, in order
        self.begun: list[str] = []  # conversation id of each request this engine started
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._check_open(name)
            return attribute(*args, **kwargs)

        return guarded

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise UsedAfterClose(f"{self.name}.{what}() called after close()")

    def _fire(self, kind: str, fault: Fault | None, subject: Any) -> None:
        if fault is None:
            return
        error = fault(subject)
        if error is None:
            return
        with self.lock:
            setattr(self, f"fail_{kind}", None)
            self.fired.append(kind)
        raise error

    def begin(self, request: Any, stats: Any) -> Any:
        self._check_open("begin")
        self.begun.append(request.conversation_id)
        return self.inner.begin(request, stats)  # type: ignore[attr-defined]

    def step(self, generations: list[Any]) -> list[tuple[str, bool]]:
        self._check_open("step")
        self._fire("step", self.fail_step, generations)
        results = self.inner.step(generations)  # type: ignore[attr-defined]
        if self.garble_step is not None and self.garble_step(generations):
            with self.lock:
                self.garble_step = None
                self.fired.append("garble")
            return [("",)] * len(results)  # an engine bug: not (text, finished) pairs
        return results

    def end(self, generation: Any, *, failed: bool = False) -> None:
        self._check_open("end")
        self.inner.end(generation, failed=failed)  # type: ignore[attr-defined]
        self._fire("end", self.fail_end, generation)

    def read_ahead(self) -> bool:
        self._check_open("read_ahead")
        return self.inner.read_ahead()  # type: ignore[attr-defined]

    def close(self) -> None:
        self._check_open("close")
        self.closed = True
        self.inner.close()
        if self.fail_close is not None:
            error, self.fail_close = self.fail_close, None
            self.fired.append("close")
            raise error


class RecordingFactory:
    """The production engine factory, wrapped: every load is recorded (name, file) and each
    engine that loads is a `FaultyEngine` (with nothing armed it behaves as the real one)."""

    def __init__(self, wrap: bool = True) -> None:
        self.wrap = wrap
        self.loads: list[tuple[str, Path]] = []
        self.engines: dict[str, list[FaultyEngine]] = {}

    def __call__(self, entry: ModelEntry, settings: CoreSettings) -> Engine:
        self.loads.append((entry.name, entry.path))
        engine = default_engine_factory(entry, settings)
        if not self.wrap:
            return engine
        faulty = FaultyEngine(engine)
        self.engines.setdefault(entry.name, []).append(faulty)
        return faulty

    def calls(self, name: str) -> int:
        return sum(loaded == name for loaded, _ in self.loads)

    def latest(self, name: str) -> FaultyEngine:
        return self.engines[name][-1]
