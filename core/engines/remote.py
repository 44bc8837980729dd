"""The remote engine: a registered model served by OpenAI-compatible inference servers.

It runs on the asyncio side (its methods are coroutines; the compute thread never sees it) and
streams each reply with `POST …/chat/completions` (`stream: true`) through one `httpx`
connection pool. The whole history is sent each turn: the server's prompt cache reuses what it
has already read. With several endpoints each request goes to the one with the fewest requests
in flight (`core.remote.endpoints`):
- a connection failure or a 5xx before the first piece tries another endpoint;
- a 429/503 is backpressure: that endpoint waits out its `Retry-After`, but at least
  `backoff_s`, doubled for each further 429/503 the same request gets (up to `backoff_max_s`), so
  `Retry-After: 0` cannot make a retry storm; the request goes to another endpoint or waits, and
  the service counts the wait in its queue estimate. After `backpressure_retries` it ends with
  `ServersBusy`, a clear message;
- a server that sends nothing for `first_byte_timeout_s` after the request (stuck, though its
  health check answers) is treated like a failure before the first token: another endpoint;
- a chunk of the wrong shape, or a line over the bound, is the endpoint's failure too;
- a failure after pieces were shown ends the reply with `ReplyCut`, a clear note;
- closing the stream (the user went away, a timeout) closes the connection, so the server stops.
API keys come from the environment variable the entry names, never from the models file, and are
registered as secrets so no log line shows them. See docs/engine.md, "Remote models".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import httpx

from core import metrics
from core.engines.base import EngineKind, GenerationRequest, GenerationStats, Message
from core.errors import EngineFailed
from core.logs import register_secret
from core.registry import ModelEntry
from core.remote.chat import Backpressure, EndpointFailed, Rejected, request_body, stream_chat
from core.remote.endpoints import Endpoint, Endpoints, NoEndpoint, backoff_s
from core.remote.tokens import RemoteTokenizer
from core.settings import CoreSettings

log = logging.getLogger(__name__)


class ReplyCut(EngineFailed):
    """The server failed after part of the reply was shown: the reply ends with this note."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(detail)
        self.user_message = (
            f"The server running {name!r} stopped answering in the middle of this reply, so it is "
            "incomplete. Please ask again."
        )
        self.args = (self.user_message,)


class ServersUnavailable(EngineFailed):
    """No endpoint could take the request (all refused connections or failed)."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(detail)
        self.user_message = (
            f"The servers running {name!r} are not answering right now. Please try again later."
        )
        self.args = (self.user_message,)


class ServersBusy(EngineFailed):
    """The servers kept answering 429/503 to one request: it stops instead of retrying forever."""

    def __init__(self, name: str, attempts: int) -> None:
        super().__init__(f"{attempts} answers of 429/503")
        self.user_message = (
            f"The servers running {name!r} are overloaded (they asked me to wait {attempts} times). "
            "Please try again in a few minutes."
        )
        self.args = (self.user_message,)


class MissingApiKey(ValueError):
    """The entry names a key variable that is not set (the pool turns it into ModelLoadError)."""


class OpenAIEngine:
    kind: ClassVar[EngineKind] = "remote"

    def __init__(
        self,
        name: str,
        urls: list[str],
        *,
        context_length: int,
        remote_model: str | None = None,
        api_key: str | None = None,
        read_timeout_s: float = 180.0,
        health_interval_s: float = 5.0,
        first_byte_timeout_s: float | None = 60.0,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        backpressure_retries: int = 6,
    ) -> None:
        self.name = name
        self.first_byte_timeout_s = first_byte_timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.backpressure_retries = backpressure_retries
        self.context_length = context_length
        self.remote_model = remote_model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(connect=5.0, read=read_timeout_s, write=30.0, pool=30.0)
        # trust_env=False: endpoints are named in the registry; a proxy meant for the package
        # registries must not sit between the bot and its own inference servers.
        self.client = httpx.AsyncClient(timeout=timeout, trust_env=False)
        self.endpoints = Endpoints(
            urls, self.client, headers=self.headers, health_interval_s=health_interval_s
        )
        self.tokenizer = RemoteTokenizer(self.endpoints, self.served_model, self.headers)

    @classmethod
    def from_entry(cls, entry: ModelEntry, settings: CoreSettings, **options: float) -> OpenAIEngine:
        tuning: dict[str, Any] = {
            "first_byte_timeout_s": settings.remote_first_byte_timeout_s,
            "backoff_s": settings.remote_backoff_s,
            "backoff_max_s": settings.remote_backoff_max_s,
            "backpressure_retries": settings.remote_backpressure_retries,
            **options,
        }
        api_key = None
        if entry.api_key_env:
            api_key = os.environ.get(entry.api_key_env)
            if not api_key:
                raise MissingApiKey(f"the environment variable {entry.api_key_env} (its API key) is not set")
            register_secret(api_key)
        return cls(
            entry.name,
            entry.urls,
            context_length=entry.context_length or settings.context_length,
            remote_model=entry.remote_model,
            api_key=api_key,
            read_timeout_s=settings.generation_timeout_s,
            **tuning,
        )

    def served_model(self, endpoint: Endpoint | None = None) -> str:
        """The model name to ask for: the entry's `remote_model`, else the first the server lists."""
        if self.remote_model:
            return self.remote_model
        for candidate in [endpoint, *self.endpoints.all]:
            if candidate is not None and candidate.served_models:
                return candidate.served_models[0]
        return self.name

    # -- tokens ----------------------------------------------------------------------------
    async def count_tokens(self, messages: list[Message]) -> int:
        self.endpoints.start()
        return await self.tokenizer.count_messages(messages)

    async def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        self.endpoints.start()
        return await self.tokenizer.truncate(text, max_tokens)

    # -- generation ------------------------------------------------------------------------
    async def stream(self, request: GenerationRequest, stats: GenerationStats) -> AsyncGenerator[str, None]:
        self.endpoints.start()
        stats.prompt_tokens = await self.tokenizer.count_messages(request.messages)  # cached: no request
        failed: set[Endpoint] = set()
        shown = False
        waits = 0  # 429/503 answers to this request
        ttfb = self.first_byte_timeout_s
        try:
            while True:
                try:
                    endpoint = await self.endpoints.acquire(failed)
                except NoEndpoint as error:
                    raise ServersUnavailable(self.name, str(error)) from None
                if not self.remote_model and not endpoint.served_models:
                    await self.endpoints.check(endpoint)  # learn the model name it serves
                body = request_body(request, self.served_model(endpoint))
                try:
                    with self.endpoints.using(endpoint):
                        async with contextlib.aclosing(
                            stream_chat(
                                self.client, endpoint, body, self.headers, stats, first_byte_timeout_s=ttfb
                            )
                        ) as pieces:
                            async for piece in pieces:
                                shown = True
                                yield piece
                    return
                except Backpressure as wait:  # sent before any piece: nothing shown yet
                    waits += 1
                    if waits > self.backpressure_retries:
                        log.warning(
                            "model %s: %d answers of 429/503 to a request; giving up", self.name, waits
                        )
                        raise ServersBusy(self.name, waits) from None
                    # On the endpoint, not in a local sleep: routing, and the service's queue
                    # estimate (backpressure_s), see the whole wait while the request sits it out.
                    floor, cap = self.backoff_s, self.backoff_max_s
                    delay = backoff_s(wait.retry_after, waits, floor_s=floor, cap_s=cap)
                    metrics.remote_backpressure(self.name)
                    self.endpoints.back_off(endpoint, delay)
                except EndpointFailed as failure:
                    if failure.down:
                        self.endpoints.mark_down(endpoint, failure.reason)
                    endpoint.last_error = failure.reason
                    if shown:
                        stats.finish_reason = "error"
                        log.warning(
                            "model %s: %s failed mid-reply: %s", self.name, endpoint.url, failure.reason
                        )
                        raise ReplyCut(self.name, f"{endpoint.url}: {failure.reason}") from None
                    log.warning(
                        "model %s: %s failed (%s); trying another endpoint",
                        self.name,
                        endpoint.url,
                        failure.reason,
                    )
                    failed.add(endpoint)
                    metrics.remote_failover(self.name)
                except Rejected as rejected:
                    raise EngineFailed(str(rejected)) from None
        except (GeneratorExit, asyncio.CancelledError):  # closed by the consumer: the server is told
            stats.finish_reason = "cancelled"
            raise

    def backpressure_s(self) -> float:
        return self.endpoints.backpressure_s()

    async def forget(self, conversation_id: str) -> None:
        """Nothing to drop: the servers' prompt caches hold no conversation of ours by name."""

    async def close(self) -> None:
        await self.endpoints.close()
        await self.client.aclose()
