"""Tests that fail on a hang instead of blocking the suite."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

AsyncTest = Callable[..., Awaitable[Any]]


def within(seconds: float) -> Callable[[AsyncTest], AsyncTest]:
    """A decorator: the whole test (service shutdown included) must end within `seconds`."""

    def decorate(test: AsyncTest) -> AsyncTest:
        @functools.wraps(test)
        async def bounded(*args: Any, **kwargs: Any) -> Any:
            async with asyncio.timeout(seconds):
                return await test(*args, **kwargs)

        return bounded

    return decorate
