"""One streamed chat completion from one endpoint (`POST …/chat/completions`, `stream: true`,
server-sent events), with each way it can fail sorted by what the caller should do next."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

from core.engines.base import GenerationRequest, GenerationStats
from core.remote.endpoints import Endpoint, retry_after_s


class EndpointFailed(Exception):
    """This endpoint could not serve the request; another one may. `down`: it could not even be
    reached (connection refused or dropped), so routing avoids it until a health check passes."""

    def __init__(self, reason: str, *, down: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.down = down


class Backpressure(Exception):
    """429/503: the endpoint is there but asks us to come back after `retry_after` seconds."""

    def __init__(self, status: int, retry_after: float) -> None:
        super().__init__(f"HTTP {status}, retry after {retry_after:.1f} s")
        self.retry_after = retry_after


class Rejected(Exception):
    """A 4xx other than 429: the request itself is wrong for this server; retrying won't help."""


def request_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": request.messages,
        "stream": True,
        "max_tokens": request.max_new_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stream_options": {"include_usage": True},  # servers that support it send token counts
    }


async def stream_chat(
    client: httpx.AsyncClient, endpoint: Endpoint, body: dict[str, Any], headers: dict[str, str], stats: GenerationStats
) -> AsyncIterator[str]:
    """The reply's pieces as they arrive. Raises `Backpressure`, `EndpointFailed` or `Rejected`;
    closing the iterator closes the connection, which is how a server learns to stop."""
    try:
        async with client.stream("POST", f"{endpoint.url}/chat/completions", json=body, headers=headers) as response:
            status = response.status_code
            if status in (429, 503):
                raise Backpressure(status, retry_after_s(response.headers.get("retry-after")))
            if status >= 500:
                raise EndpointFailed(f"HTTP {status}: {await _snippet(response)}")
            if status != 200:
                raise Rejected(f"{endpoint.url} answered HTTP {status}: {await _snippet(response)}")
            async for event in EventSource(response).aiter_sse():
                if event.data.strip() == "[DONE]":
                    return
                if not event.data.strip():
                    continue
                for piece in _pieces(json.loads(event.data), stats):
                    yield piece
    except httpx.ConnectError as error:
        raise EndpointFailed(f"cannot connect: {error}", down=True) from error
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as error:
        raise EndpointFailed(f"connection lost: {type(error).__name__}", down=True) from error
    except httpx.TimeoutException as error:
        raise EndpointFailed(f"timed out: {type(error).__name__}") from error
    except (SSEError, ValueError) as error:  # not an event stream, or bad JSON in it
        raise EndpointFailed(f"bad stream: {error}") from error


def _pieces(chunk: Any, stats: GenerationStats) -> list[str]:
    """The text in one `chat.completion.chunk`; its finish reason and usage go to `stats`."""
    if not isinstance(chunk, dict):
        raise ValueError("a chunk is not a JSON object")
    if "error" in chunk:  # some servers report a failure mid-stream as an event
        raise EndpointFailed(f"server error: {str(chunk['error'])[:200]}")
    pieces = []
    for choice in chunk.get("choices") or []:
        text = (choice.get("delta") or {}).get("content")
        if text:
            stats.completion_tokens += 1  # one chunk per token on llama.cpp servers; usage corrects it
            pieces.append(text)
        if choice.get("finish_reason"):
            stats.finish_reason = str(choice["finish_reason"])
    usage = chunk.get("usage") or {}
    if isinstance(usage.get("completion_tokens"), int):
        stats.completion_tokens = usage["completion_tokens"]
    if isinstance(usage.get("prompt_tokens"), int):
        stats.prompt_tokens = usage["prompt_tokens"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None:
        cached = (chunk.get("timings") or {}).get("cache_n")  # llama.cpp's server
    if isinstance(cached, int):
        stats.reused_tokens = cached
    return pieces


async def _snippet(response: httpx.Response) -> str:
    """The start of an error body, for the log and the failure's detail."""
    try:
        body = await response.aread()
    except httpx.HTTPError:
        return ""
    return body.decode("utf-8", errors="replace").strip().replace("\n", " ")[:200]
