"""Count every platform API call and its answer (core/metrics.py): hooks for the HTTP clients the
adapters' libraries use — httpx (python-telegram-bot) and aiohttp (discord.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx

from core import metrics


def httpx_hooks(platform: str) -> dict[str, Any]:
    """`httpx_kwargs` for an httpx client whose every response is counted for `platform`."""

    async def on_response(response: httpx.Response) -> None:
        metrics.platform_response(platform, response.status_code)

    return {"event_hooks": {"response": [on_response]}}


def aiohttp_trace(platform: str) -> aiohttp.TraceConfig:
    """A trace config for an aiohttp session whose every request is counted for `platform` (the
    websocket upgrade, 101, is the gateway connection, not an API call)."""

    async def on_end(_session: aiohttp.ClientSession, _context: SimpleNamespace, params: Any) -> None:
        if params.response.status != 101:
            metrics.platform_response(platform, params.response.status)

    async def on_exception(_session: aiohttp.ClientSession, _context: SimpleNamespace, params: Any) -> None:
        if not isinstance(params.exception, asyncio.CancelledError):
            metrics.platform_response(platform, None)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    trace.on_request_exception.append(on_exception)
    return trace
