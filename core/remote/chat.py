"""One streamed chat completion from one endpoint (`POST …/chat/completions`, `stream: true`,
server-sent events), with each way it can fail sorted by what the caller should do next: a chunk of
the wrong shape, an oversized line or a server silent past the first-byte timeout is the
endpoint's fault (`EndpointFailed`: another endpoint is tried, or the reply ends with a note)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from core.engines.base import GenerationRequest, GenerationStats
from core.remote.endpoints import Endpoint, retry_after_s
from core.remote.sse import MAX_EVENT_BYTES, event_data
from core.remote.text import SurrogateJoiner, fix_surrogates, neutralize_markers


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
    """The chat request. Message content other than the system prompt (the operator's) has its
    template markers neutralized: the server parses special tokens in what it renders."""
    messages = [
        m if m.get("role") == "system" else {**m, "content": neutralize_markers(m["content"])}
        for m in request.messages
    ]
    return {
        "model": model,
        "messages": messages,
        "stream": True,
        "max_tokens": request.max_new_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stream_options": {"include_usage": True},  # servers that support it send token counts
    }


async def stream_chat(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    body: dict[str, Any],
    headers: dict[str, str],
    stats: GenerationStats,
    *,
    first_byte_timeout_s: float | None = None,
    max_event_bytes: int = MAX_EVENT_BYTES,
) -> AsyncGenerator[str, None]:
    """The reply's pieces as they arrive. Raises `Backpressure`, `EndpointFailed` or `Rejected`;
    closing the iterator closes the connection, which is how a server learns to stop.

    `first_byte_timeout_s` bounds the time from sending the request to the stream's first event
    (a stuck server whose health check still answers); what follows is bounded by the client's
    read timeout and the service's generation deadline."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            try:
                async with asyncio.timeout(first_byte_timeout_s):
                    response = await stack.enter_async_context(
                        client.stream("POST", f"{endpoint.url}/chat/completions", json=body, headers=headers)
                    )
                    await _check_status(endpoint, response)
                    events = event_data(response, max_event_bytes)
                    stack.push_async_callback(events.aclose)
                    data = await anext(events, None)
            except TimeoutError:
                raise EndpointFailed(f"nothing received within {first_byte_timeout_s:g} s") from None
            joiner = SurrogateJoiner()
            while data is not None and data.strip() != "[DONE]":
                if data.strip():
                    for piece in _pieces(json.loads(data), stats):
                        if text := joiner.feed(piece):
                            yield text
                data = await anext(events, None)
            if tail := joiner.flush():
                yield tail
        except httpx.ConnectError as error:
            raise EndpointFailed(f"cannot connect: {error}", down=True) from error
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as error:
            raise EndpointFailed(f"connection lost: {type(error).__name__}", down=True) from error
        except httpx.TimeoutException as error:
            raise EndpointFailed(f"timed out: {type(error).__name__}") from error
        except ValueError as error:  # not an event stream, an oversized line, bad JSON, a bad chunk
            raise EndpointFailed(f"bad stream: {fix_surrogates(str(error))[:200]}") from error


async def _check_status(endpoint: Endpoint, response: httpx.Response) -> None:
    status = response.status_code
    if status in (429, 503):
        raise Backpressure(status, retry_after_s(response.headers.get("retry-after")))
    if status >= 500:
        raise EndpointFailed(f"HTTP {status}: {await _snippet(response)}")
    if status != 200:
        raise Rejected(f"{endpoint.url} answered HTTP {status}: {await _snippet(response)}")


class BadChunk(ValueError):
    """A chunk that is JSON but not the shape of a `chat.completion.chunk`."""


def _field(container: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """`container[name]` if it has type `kind`, `default` if absent or null; else `BadChunk`."""
    value = container.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise BadChunk(f"{name!r} is {type(value).__name__}, not {kind.__name__}")
    return value


def _count(container: Any, name: str) -> int | None:
    """A token count from `usage` or `timings`, or None: statistics only, so a value of the wrong
    type (or a container that is not an object) is ignored rather than failing the reply."""
    value = container.get(name) if isinstance(container, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _pieces(chunk: Any, stats: GenerationStats) -> list[str]:
    """The text in one `chat.completion.chunk`; its finish reason and usage go to `stats`. A chunk
    whose text path has another shape is the server's fault (`BadChunk`): missing fields are fine,
    wrong types (choices not a list, delta not an object, content not a string) are not."""
    if not isinstance(chunk, dict):
        raise BadChunk("a chunk is not a JSON object")
    if "error" in chunk:  # some servers report a failure mid-stream as an event
        raise EndpointFailed(f"server error: {fix_surrogates(str(chunk['error']))[:200]}")
    pieces = []
    for choice in _field(chunk, "choices", list, []):
        if not isinstance(choice, dict):
            raise BadChunk("a choice is not a JSON object")
        text = _field(_field(choice, "delta", dict, {}), "content", str, "")
        if text:
            stats.completion_tokens += 1  # one chunk per token on llama.cpp servers; usage corrects it
            pieces.append(text)
        if finish := choice.get("finish_reason"):
            stats.finish_reason = str(finish)[:40]
    usage = chunk.get("usage")
    if (completion := _count(usage, "completion_tokens")) is not None:
        stats.completion_tokens = completion
    if (prompt := _count(usage, "prompt_tokens")) is not None:
        stats.prompt_tokens = prompt
    cached = _count(usage.get("prompt_tokens_details") if isinstance(usage, dict) else None, "cached_tokens")
    if cached is None:
        cached = _count(chunk.get("timings"), "cache_n")  # llama.cpp's server
    if cached is not None:
        stats.reused_tokens = cached
    return pieces


async def _snippet(response: httpx.Response) -> str:
    """The start of an error body, for the log and the failure's detail."""
    try:
        body = await response.aread()
    except httpx.HTTPError:
        return ""
    return body.decode("utf-8", errors="replace").strip().replace("\n", " ")[:200]
