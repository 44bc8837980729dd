"""Prometheus metrics of one lorabot process (docs/operations.md lists them).

Every metric lives in this module's `REGISTRY` (one per process: shards and replicas each expose
their own), and is changed through the one-line hooks below, called where the event happens:
the service (tokens), the store (errors, deferred writes), remote engines (failovers), the
ratings writer, and the adapters (replies, platform calls and 429s, connected or not). What is
a state rather than an event (queue depth, loaded models, endpoint health) is read from the
running `ChatService` at scrape time (`ServiceCollector`), so it costs nothing between scrapes.

Labels stay bounded: platform, model (registered names), outcome, endpoint (configured URLs),
status class, store operation, rating value. Never a user, chat, conversation or message id.
The hooks cost a dictionary look-up and an add each; with LORABOT_METRICS_PORT unset nothing
reads them and no port is opened.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from core.service import ChatService

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes, process_cpu_seconds_total, …

# seconds from the question to its first token / final text, as users wait for them
LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300)
SPEED_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500)
OUTCOMES = ("answered", "refused", "error", "interrupted", "undelivered")

REPLIES = Counter(
    "lorabot_replies",
    "Replies by platform, model and outcome (answered, refused, error, interrupted, undelivered).",
    ["platform", "model", "outcome"],
    registry=REGISTRY,
)
FIRST_TOKEN = Histogram(
    "lorabot_time_to_first_token_seconds",
    "Seconds from a question (queue included) to the first generated token.",
    ["platform", "model"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
FINAL_TEXT = Histogram(
    "lorabot_time_to_final_text_seconds",
    "Seconds from a question to its final text on the platform (answered replies).",
    ["platform", "model"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "lorabot_queue_wait_seconds",
    "Seconds a question waited in the fair queue before generation started.",
    ["platform"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter("lorabot_generated_tokens", "Tokens generated.", ["model"], registry=REGISTRY)
SPEED = Histogram(
    "lorabot_reply_tokens_per_second",
    "Decoding speed of each reply (tokens after the first ÷ seconds).",
    ["model"],
    buckets=SPEED_BUCKETS,
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter(
    "lorabot_prompt_tokens",
    "Prompt tokens: read by the model (source=read) or served from its KV cache (source=cached).",
    ["model", "source"],
    registry=REGISTRY,
)
PLATFORM_REQUESTS = Counter(
    "lorabot_platform_requests",
    "Platform API calls by platform and answer (2xx, 3xx, 4xx, 429, 5xx, error: no answer).",
    ["platform", "status"],
    registry=REGISTRY,
)
PLATFORM_429 = Counter(
    "lorabot_platform_rate_limited", "Platform API calls answered 429.", ["platform"], registry=REGISTRY
)
PLATFORM_CONNECTED = Gauge(
    "lorabot_platform_connected",
    "1 while the platform's connection is up (gateway, polling or webhook).",
    ["platform"],
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "lorabot_store_errors",
    "History store calls that failed (operation: read, write, lease, open).",
    ["operation"],
    registry=REGISTRY,
)
STORE_DEFERRED = Counter(
    "lorabot_store_deferred_writes",
    "Writes (a reply's end, a delivery record) kept in memory because the store refused them.",
    registry=REGISTRY,
)
REMOTE_FAILOVERS = Counter(
    "lorabot_remote_failovers",
    "Requests to a remote model moved to another endpoint after one failed.",
    ["model"],
    registry=REGISTRY,
)
REMOTE_BACKPRESSURE = Counter(
    "lorabot_remote_backpressure",
    "429/503 answers of a remote model's endpoints.",
    ["model"],
    registry=REGISTRY,
)
RATINGS = Counter(
    "lorabot_ratings",
    "Ratings stored, by model and value (up, down, removed).",
    ["model", "value"],
    registry=REGISTRY,
)
LOOP_LAG = Gauge(
    "lorabot_event_loop_lag_seconds",
    "How late the event loop ran a timer, last measured (a busy or blocked loop answers late).",
    registry=REGISTRY,
)

# platform -> connected: what /readyz asks of the adapters (set by them; empty without any)
platforms: dict[str, bool] = {}


# -- hooks (one line where the event happens) -----------------------------------------------------
def reply_finished(
    platform: str,
    model: str,
    outcome: str,
    *,
    queued_s: float | None = None,
    first_token_s: float | None = None,
    final_s: float | None = None,
) -> None:
    """A reply ended (bots/replying.py); seconds are from the question, None where not reached."""
    model = model or "none"
    REPLIES.labels(platform, model, outcome).inc()
    if queued_s is not None:
        QUEUE_WAIT.labels(platform).observe(queued_s)
    if first_token_s is not None:
        FIRST_TOKEN.labels(platform, model).observe(first_token_s)
    if final_s is not None:
        FINAL_TEXT.labels(platform, model).observe(final_s)


def generated(model: str, tokens: int, tokens_per_s: float, prompt_tokens: int, cached_tokens: int) -> None:
    """A reply's generation ended (core/service.py)."""
    TOKENS.labels(model).inc(tokens)
    if tokens_per_s > 0:
        SPEED.labels(model).observe(tokens_per_s)
    cached = max(0, min(cached_tokens, prompt_tokens))
    PROMPT_TOKENS.labels(model, "cached").inc(cached)
    PROMPT_TOKENS.labels(model, "read").inc(prompt_tokens - cached)


def platform_response(platform: str, status: int | None) -> None:
    """One platform API call ended: its HTTP status, or None when no answer came."""
    if status is None:
        label = "error"
    elif status == 429:
        label = "429"
        PLATFORM_429.labels(platform).inc()
    else:
        label = f"{min(max(status // 100, 1), 5)}xx"
    PLATFORM_REQUESTS.labels(platform, label).inc()


def platform_connected(platform: str, connected: bool) -> None:
    platforms[platform] = connected
    PLATFORM_CONNECTED.labels(platform).set(1 if connected else 0)


def platform_gone(platform: str) -> None:
    """The adapter stopped: it no longer counts for /readyz."""
    platforms.pop(platform, None)
    PLATFORM_CONNECTED.labels(platform).set(0)


def store_error(operation: str) -> None:
    STORE_ERRORS.labels(operation).inc()


def store_deferred() -> None:
    STORE_DEFERRED.inc()


def remote_failover(model: str) -> None:
    REMOTE_FAILOVERS.labels(model).inc()


def remote_backpressure(model: str) -> None:
    REMOTE_BACKPRESSURE.labels(model).inc()


def rated(model: str | None, value: int | None) -> None:
    RATINGS.labels(model or "none", {1: "up", -1: "down"}.get(value or 0, "removed")).inc()


# -- state read at scrape time ---------------------------------------------------------------------
def endpoint_label(url: str) -> str:
    """An endpoint URL without user:password (the label of its health gauge)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class ServiceCollector(Collector):
    """Queue, running replies, wait estimate, loaded models and their memory, remote endpoints'
    health and the store's waiting writes, read from `service` when Prometheus scrapes."""

    def __init__(self, service: ChatService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        scheduler = service.scheduler
        waiting = scheduler.waiting
        yield _gauge("lorabot_queue_depth", "Questions waiting in the fair queue.", waiting)
        yield _gauge("lorabot_replies_running", "Replies being generated now.", scheduler.running)
        busy = scheduler.running >= service.settings.parallel  # else a new question starts at once
        estimate = service.estimated_wait_s(waiting + 1) if busy else 0.0
        yield _gauge(
            "lorabot_queue_wait_estimate_seconds",
            "The wait a new question would be told now (NaN before the first reply).",
            math.nan if estimate is None else estimate,
        )
        store = service.history
        yield _gauge(
            "lorabot_store_deferred_writes_waiting",
            "Deferred writes not stored yet (written with the next write that succeeds).",
            store.deferred_writes if store is not None else 0,
        )
        loaded = GaugeMetricFamily("lorabot_model_loaded", "1 for each loaded model.", labels=["model"])
        memory = GaugeMetricFamily(
            "lorabot_model_memory_bytes",
            "A loaded model's memory: weights (its GGUF file, mapped) and prompt_cache (saved KV state).",
            labels=["model", "part"],
        )
        endpoints = GaugeMetricFamily(
            "lorabot_remote_endpoint_up",
            "1 while a loaded remote model's endpoint answers its health checks.",
            labels=["model", "endpoint"],
        )
        for name, parts in service.pool.memory().items():
            loaded.add_metric([name], 1)
            for part, size in parts.items():
                memory.add_metric([name, part], size)
        for name, states in service.pool.endpoint_health().items():
            for url, up in states:
                endpoints.add_metric([name, endpoint_label(url)], 1 if up else 0)
        yield from (loaded, memory, endpoints)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
