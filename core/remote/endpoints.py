"""A model's endpoints: which one takes the next request, which are up, which asked us to wait.

Routing: the endpoint with the fewest requests in flight among those up and not backing off
(ties: the one used least recently, so idle endpoints share the work). An endpoint is *down*
after a connection failure and *up* again when a health check (`GET …/models`, every
`health_interval_s`) answers; while every endpoint is down, requests still try them (the last
failure may be stale). A 429/503 is *backpressure*: the endpoint is skipped until its
`Retry-After` has passed (never less than the growing floor of `backoff_s`), and a request
finding every endpoint backing off waits for the first to come back instead of failing
(`backpressure_s` feeds the service's queue estimate).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER_S = 1.0  # a 429/503 without Retry-After
MAX_RETRY_AFTER_S = 300.0  # a bigger Retry-After is taken as this (the reply's timeout ends it sooner)


def retry_after_s(value: str | None, now: datetime | None = None) -> float:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return DEFAULT_RETRY_AFTER_S
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_S
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return DEFAULT_RETRY_AFTER_S
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def backoff_s(retry_after: float, attempt: int, *, floor_s: float, cap_s: float) -> float:
    """The wait after one request's `attempt`-th 429/503 (1-based): what the server asked, but at
    least `floor_s` doubled for each earlier one, up to `cap_s`, so `Retry-After: 0` (proxies send
    it) or a date in the past cannot make a retry storm. A longer `Retry-After` is obeyed."""
    grown = min(cap_s, floor_s * 2 ** min(attempt - 1, 32))
    return max(retry_after, grown)


@dataclass(eq=False)
class Endpoint:
    """One server's base URL (…/v1) and what we know of it."""

    url: str
    in_flight: int = 0
    up: bool = True  # optimistic until a connection fails
    available_at: float = 0.0  # monotonic time its Retry-After ends
    last_used: float = 0.0
    served_models: list[str] = field(default_factory=list)  # ids from GET …/models
    requests: int = 0  # chat requests sent to it (for tests and logs)
    last_error: str = ""

    @property
    def root(self) -> str:
        """The server's root, where llama.cpp and vLLM put `/tokenize` and `/health`."""
        return self.url.removesuffix("/v1")


class NoEndpoint(Exception):
    """Every endpoint failed for this request."""


class Endpoints:
    def __init__(
        self,
        urls: list[str],
        client: httpx.AsyncClient,
        *,
        headers: dict[str, str] | None = None,
        health_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("a remote model needs at least one endpoint URL")
        self.all = [Endpoint(url) for url in urls]
        self.client = client
        self.headers = headers or {}
        self.health_interval_s = health_interval_s
        self.clock = clock
        self._changed = asyncio.Event()  # an endpoint freed up, came back, or its wait ended
        self._health: asyncio.Task[None] | None = None

    # -- routing ---------------------------------------------------------------------------
    def pick(self, exclude: set[Endpoint] = frozenset(), *, ignore_backoff: bool = False) -> Endpoint | None:  # type: ignore[assignment]
        """The endpoint for the next request now, or None when every candidate must be waited for."""
        now = self.clock()
        candidates = [e for e in self.all if e not in exclude]
        ready = [e for e in candidates if ignore_backoff or e.available_at <= now]
        if not ready:
            return None
        up = [e for e in ready if e.up] or ready  # all down: the last failures may be stale
        return min(up, key=lambda e: (e.in_flight, e.last_used))

    async def acquire(self, exclude: set[Endpoint]) -> Endpoint:
        """An endpoint for a request, waiting while every candidate is backing off; `NoEndpoint`
        once every endpoint has failed this request."""
        while True:
            if all(e in exclude for e in self.all):
                raise NoEndpoint("; ".join(f"{e.url}: {e.last_error or 'failed'}" for e in self.all))
            endpoint = self.pick(exclude)
            if endpoint is not None:
                return endpoint
            self._changed.clear()
            wait = min(e.available_at for e in self.all if e not in exclude) - self.clock()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wait)):
                    await self._changed.wait()

    @contextlib.contextmanager
    def using(self, endpoint: Endpoint) -> Iterator[None]:
        """Count a request in flight on `endpoint` for the body."""
        endpoint.in_flight += 1
        endpoint.requests += 1
        endpoint.last_used = self.clock()
        try:
            yield
        finally:
            endpoint.in_flight -= 1
            self._changed.set()

    def back_off(self, endpoint: Endpoint, seconds: float) -> None:
        endpoint.available_at = max(endpoint.available_at, self.clock() + seconds)
        log.info("endpoint %s asked to wait %.1f s (backpressure)", endpoint.url, seconds)

    def mark_down(self, endpoint: Endpoint, reason: str) -> None:
        endpoint.last_error = reason
        if endpoint.up:
            log.warning("endpoint %s is down: %s", endpoint.url, reason)
        endpoint.up = False

    def mark_up(self, endpoint: Endpoint) -> None:
        if not endpoint.up:
            log.info("endpoint %s is up again", endpoint.url)
            endpoint.up = True
            self._changed.set()

    def backpressure_s(self) -> float:
        """0 while some endpoint takes requests now, else seconds until the first one does."""
        now = self.clock()
        if any(e.available_at <= now for e in self.all):
            return 0.0
        return min(e.available_at for e in self.all) - now

    # -- health ----------------------------------------------------------------------------
    async def check(self, endpoint: Endpoint) -> bool:
        """`GET …/models`: the server answers (then it is up; its model ids are kept) or not."""
        try:
            response = await self.client.get(f"{endpoint.url}/models", headers=self.headers, timeout=5.0)
        except httpx.HTTPError as error:
            self.mark_down(endpoint, f"health check: {type(error).__name__}")
            return False
        if response.status_code >= 500 and response.status_code != 503:
            self.mark_down(endpoint, f"health check: HTTP {response.status_code}")
            return False
        if response.status_code == 200:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                endpoint.served_models = [str(m["id"]) for m in response.json().get("data", []) if "id" in m]
        self.mark_up(endpoint)  # a 503 (loading, busy) or 401 is a server that is there
        return True

    def start(self) -> None:
        """Check every endpoint now and then every `health_interval_s`, until `close`."""
        if self._health is None:
            self._health = asyncio.create_task(self._check_forever(), name="lorabot-endpoint-health")

    async def _check_forever(self) -> None:
        while True:
            await asyncio.gather(*(self.check(e) for e in self.all))
            await asyncio.sleep(self.health_interval_s)

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
