"""Wait for a condition instead of guessing a sleep: the 2-core test machine may be busy, so a
fixed sleep is either too short there or wasted everywhere else."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

WAIT_S = 30.0  # generous for a busy machine; a hang still fails the test instead of blocking the suite


async def until(condition: Callable[[], T | Awaitable[T]], timeout: float = WAIT_S, every: float = 0.01) -> T:
    """Re-check `condition()` (plain or async) every `every` seconds until it is truthy and return
    its value; `TimeoutError` after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            value = condition()
            if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            await asyncio.sleep(every)
