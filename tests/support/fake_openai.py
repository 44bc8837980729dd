"""A small OpenAI-compatible server on loopback whose answers a test scripts (aiohttp).

`/v1/chat/completions` streams "Hello from the fake server." as server-sent events, unless the
next entry of `script` says otherwise, one entry per chat request:
- `(status, headers)`: answer that status (e.g. `(429, {"Retry-After": "0"})`);
- `Raw(parts)`: a 200 event stream whose body is `parts` (bytes), each written and drained on its
  own, so a test controls exactly how the stream is cut (`sse(...)` builds parts from chunks);
- `Flood(line_bytes)`: a 200 event stream of one line that never ends, written until the client
  goes away or `line_bytes` are out (`written` counts what went out);
- `Silent(headers_first)`: accept the request and send nothing (or only the headers) until the
  server stops: a stuck server. `/v1/models` keeps answering, so its health check passes.
Real servers cannot be made to do these on cue; the main path is tested against a real
`python -m llama_cpp.server` (tests/test_remote_engine.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Raw:
    parts: list[bytes]


@dataclass
class Flood:
    line_bytes: int
    piece_bytes: int = 1 << 16


@dataclass
class Silent:
    headers_first: bool = False


def chunk(content: Any = None, **fields: Any) -> dict[str, Any]:
    """A `chat.completion.chunk` carrying `content` (any JSON value: tests send wrong ones too)."""
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}}],
        **fields,
    }


def sse(*chunks: dict[str, Any] | str, done: bool = True) -> list[bytes]:
    """One SSE event per chunk (a str is sent as the event's data verbatim), then `[DONE]`."""
    events = [c if isinstance(c, str) else json.dumps(c) for c in chunks]
    return [f"data: {data}\n\n".encode() for data in events] + ([b"data: [DONE]\n\n"] if done else [])


Answer = tuple[int, dict[str, str]] | Raw | Flood | Silent
GREETING = ["Hello", " from", " the", " fake", " server."]


class FakeOpenAI:
    def __init__(self, script: list[Answer] | None = None, *, api_key: str | None = None) -> None:
        self.script = list(script or [])
        self.api_key = api_key
        self.chats: list[tuple[float, dict, dict]] = []  # (monotonic time, headers, body) of each request
        self.health_checks = 0
        self.written = 0  # bytes a Flood got out before the client went away
        self.open_streams = 0  # 200 event streams still being written
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self._stopping.set()  # silent handlers end, so the shutdown does not wait for them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        if not self._authorized(request):
            return web.json_response({"error": "bad key"}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "fake-model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.chats.append((time.monotonic(), dict(request.headers), body))
        if not self._authorized(request):
            return web.json_response({"error": "bad key"}, status=401)
        answer = self.script.pop(0) if self.script else Raw(sse(*(chunk(word) for word in GREETING)))
        if isinstance(answer, tuple):
            status, headers = answer
            return web.json_response({"error": f"scripted {status}"}, status=status, headers=headers)
        if isinstance(answer, Silent) and not answer.headers_first:
            await self._stopping.wait()
            return web.Response(status=500)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.open_streams += 1
        try:
            if isinstance(answer, Silent):
                await self._stopping.wait()
            elif isinstance(answer, Raw):
                for part in answer.parts:
                    await response.write(part)
            else:
                await response.write(b"data: ")
                piece = b"x" * answer.piece_bytes
                while self.written < answer.line_bytes:
                    await response.write(piece)
                    self.written += len(piece)
        except ConnectionError:
            pass  # the client went away
        finally:
            self.open_streams -= 1
        return response


@contextlib.asynccontextmanager
async def fake_openai_servers() -> AsyncIterator[Callable[..., Awaitable[FakeOpenAI]]]:
    """`make(script, **options)` starts a fake server; every one started is stopped on the way out."""
    servers: list[FakeOpenAI] = []

    async def make(script: Any = None, **options: Any) -> FakeOpenAI:
        servers.append(await FakeOpenAI(script, **options).start())
        return servers[-1]

    try:
        yield make
    finally:
        for server in servers:
            await server.stop()
