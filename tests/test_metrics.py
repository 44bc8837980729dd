"""Issue 26: Prometheus metrics, /healthz and /readyz (core/metrics.py, core/ops_server.py).

The real bot process runs a load against the fake Telegram while its /metrics is scraped: the
counters must match what the fake saw (replies, 429s), the histograms must be filled, and no label
may carry a user, chat or conversation id. Readiness follows the suite's real PostgreSQL down and
up again. With LORABOT_METRICS_PORT unset the bot process listens on no port at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.fakes.discord import FakeDiscord
from bench.fakes.telegram import FakeBotAPI
from bench.load import Run
from bench.load_users import TelegramWorld, layout
from bots.discord_bot.client import LorabotClient
from bots.discord_bot.runner import run_discord
from bots.discord_bot.settings import DiscordSettings
from bots.telegram_bot import run_telegram
from bots.telegram_bot.settings import TelegramSettings
from core import metrics
from core.events import Accepted, Done
from core.ops_server import OpsServer
from lorabot.serve import ops_server
from support.engines import make_service
from support.fake_openai import fake_openai_servers
from support.remote_service import remote_service
from support.waiting import until

ALLOWED_LABELS = {
    "platform",
    "model",
    "outcome",
    "status",
    "operation",
    "source",
    "value",
    "endpoint",
    "part",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def value(scraped: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(v for n, found, v in scraped if n == name and labels.items() <= found.items())


def listening_ports(pid: int) -> set[int]:
    return {
        c.laddr.port for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN
    }


async def scrape(port: int, path: str = "/metrics") -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


# -- the real bot process under load -----------------------------------------------------------------
@pytest.fixture
def bot_env(monkeypatch):
    """The bot process's settings: none from this environment, short answers."""
    for name in list(os.environ):
        if name.startswith(("LORABOT_", "DISCORD_", "TELEGRAM_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LORABOT_MAX_NEW_TOKENS", "12")
    return monkeypatch


@contextlib.asynccontextmanager
async def telegram_run(tmp_path: Path, users: int, messages: int):
    fake = FakeBotAPI()
    await fake.start()
    world = TelegramWorld(fake, layout("telegram", users, groups=1, group_users=2))
    run = Run(
        world, tmp_path / "run", messages=messages, timeout_s=240, think_s=0.2, ramp_s=1.0,
        patience_s=0, seed=1, progress=False, rate=False,
    )  # fmt: skip
    try:
        original_start = run.start_bot

        async def start_once() -> None:  # drive() starts the bot unless the test already did
            if run.process is None:
                await original_start()

        run.start_bot = start_once  # type: ignore[method-assign]
        yield fake, world, run
    finally:
        if run.process is not None:
            await run.stop_bot()
        run.turns.close()
        await fake.stop()


@pytest.mark.slow
async def test_a_load_run_is_counted_on_the_real_endpoint(bot_env, tmp_path):
    port = free_port()
    bot_env.setenv("LORABOT_METRICS_PORT", str(port))
    async with telegram_run(tmp_path, users=4, messages=2) as (fake, world, run):
        fake.rate_limit("editMessageText", retry_after=1, times=2)  # Telegram's flood control, twice
        fake.rate_limit("sendMessage", retry_after=1, times=1)
        scraped_during: list[list[tuple[str, dict[str, str], float]]] = []

        async def scrape_while_running() -> None:
            while True:
                response = await scrape(port)
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain")
                scraped_during.append(samples(response.text))
                await asyncio.sleep(0.5)

        await run.start_bot()
        assert listening_ports(run.process.pid) == {port}  # only the metrics port, on loopback
        ready = await until(lambda: _status_if(port, 200))  # connected, store answers, model loadable
        body = ready.json()
        assert body["checks"]["platforms"]["detail"] == "connected: telegram"
        assert (await scrape(port, "/healthz")).status_code == 200
        scraper = asyncio.create_task(scrape_while_running())
        try:
            await run.drive()
        finally:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
        # the bot is idle now (drive waits for every answer, then a second more)
        calls_before = len(fake.calls)  # it keeps polling getUpdates meanwhile
        final = samples((await scrape(port)).text)
        calls_after = len(fake.calls)
        asks = run.tracker.all

    answered = sum(1 for ask in asks if ask.outcome == "answered")
    refused = sum(1 for ask in asks if ask.outcome == "refused")
    assert len(asks) == 2 * len(world.places) and answered >= len(asks) - 2
    assert len(scraped_during) >= 3, "scraped while the load ran"
    # counters only grow while the run goes on
    for name in (
        "lorabot_replies_total",
        "lorabot_platform_requests_total",
        "lorabot_generated_tokens_total",
    ):
        seen = [value(each, name) for each in [*scraped_during, final]]
        assert seen == sorted(seen), (name, seen)
    # replies: what the fake users got
    assert value(final, "lorabot_replies_total", platform="telegram", outcome="answered") == answered
    assert value(final, "lorabot_replies_total", platform="telegram", outcome="refused") == refused
    assert value(final, "lorabot_replies_total", platform="telegram") == len(asks)
    # 429s and calls: what the fake answered (a poll may still be open: counted when it ends)
    answered_429 = sum(1 for call in fake.calls if call.status == 429)
    assert answered_429 == 3
    assert value(final, "lorabot_platform_rate_limited_total", platform="telegram") == answered_429
    assert value(final, "lorabot_platform_requests_total", platform="telegram", status="429") == answered_429
    counted = value(final, "lorabot_platform_requests_total", platform="telegram")
    assert calls_before - 1 <= counted <= calls_after
    # histograms filled: one observation per answered reply
    model = "smollm2-135m"
    for name in ("lorabot_time_to_first_token_seconds", "lorabot_time_to_final_text_seconds"):
        assert value(final, f"{name}_count", platform="telegram", model=model) == answered, name
        assert value(final, f"{name}_sum", platform="telegram", model=model) > 0, name
        assert value(final, f"{name}_bucket", platform="telegram", model=model, le="+Inf") == answered
    assert value(final, "lorabot_reply_tokens_per_second_count", model=model) > 0
    assert value(final, "lorabot_generated_tokens_total", model=model) >= answered
    assert value(final, "lorabot_prompt_tokens_total", model=model, source="read") > 0
    assert value(final, "lorabot_model_loaded", model=model) == 1
    assert value(final, "lorabot_model_memory_bytes", model=model, part="weights") > 1_000_000
    assert value(final, "lorabot_queue_depth") == 0 and value(final, "lorabot_replies_running") == 0
    assert value(final, "lorabot_queue_wait_estimate_seconds") == 0  # idle: a question starts at once
    assert value(final, "lorabot_platform_connected", platform="telegram") == 1
    assert value(final, "process_resident_memory_bytes") > 0
    # bounded labels: no user, chat, message or conversation id anywhere
    ids = {str(person["id"]) for person in world.people.values()} | {
        str(chat["id"]) for chat in world.chats.values()
    }
    ids |= {place.conversation for place in world.places}
    for each in [*scraped_during, final]:
        for name, labels, _ in each:
            assert set(labels) - {"le"} <= ALLOWED_LABELS, (name, labels)
            for label in labels.values():
                assert label not in ids and not re.search(r"\d{5,}", label), (name, labels)


@pytest.mark.slow
async def test_metrics_are_off_by_default_and_open_no_port(bot_env, tmp_path):
    async with telegram_run(tmp_path, users=1, messages=1) as (fake, world, run):
        await run.start_bot()  # connected to the fake: it polls
        await run.drive()
        assert run.tracker.all and all(ask.outcome == "answered" for ask in run.tracker.all)
        assert listening_ports(run.process.pid) == set()
    log = run.log_path.read_text()
    assert "/healthz" not in log  # no "metrics, /healthz and /readyz on http://…" line


# -- in one process ----------------------------------------------------------------------------------
async def test_unset_port_starts_nothing_and_zero_picks_a_free_one(tmp_path):
    service = make_service(tmp_path)
    await service.start()
    try:
        before = listening_ports(os.getpid())
        async with ops_server(service) as server:
            assert server is None
            assert listening_ports(os.getpid()) == before
        service.settings = service.settings.model_copy(update={"metrics_port": 0})
        async with ops_server(service) as server:
            assert server is not None
            assert listening_ports(os.getpid()) == before | {server.port}
            assert (await scrape(server.port, "/healthz")).json()["status"] == "ok"
        assert listening_ports(os.getpid()) == before
    finally:
        await service.close()


async def test_readiness_follows_postgresql_down_and_up(tmp_path, postgres_server, postgres_url):
    service = make_service(tmp_path, database_url=postgres_url)
    await service.start()
    server = OpsServer(service, check_timeout_s=2.0)
    port = await server.start()
    try:
        ready = await scrape(port, "/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["store"] == {"ok": True, "detail": "postgresql answers"}
        postgres_server.stop_server()
        try:
            down = await until(lambda: _status_if(port, 503), timeout=30, every=0.2)
            checks = down.json()["checks"]
            assert not checks["store"]["ok"] and checks["model"]["ok"] and checks["platforms"]["ok"]
            assert postgres_url not in down.text
            assert (await scrape(port, "/healthz")).status_code == 200  # alive, only not ready
            scraped = samples((await scrape(port)).text)
            assert value(scraped, "lorabot_store_errors_total", operation="read") >= 1
        finally:
            postgres_server.start_server()
        back = await until(lambda: _status_if(port, 200), timeout=30, every=0.2)
        assert back.json()["checks"]["store"]["ok"]
    finally:
        await server.close()
        await service.close()


async def _status_if(port: int, status: int) -> httpx.Response | None:
    response = await scrape(port, "/readyz")
    return response if response.status_code == status else None


async def test_not_ready_until_the_platform_is_connected_and_its_model_loadable(tmp_path):
    fake = FakeBotAPI()
    await fake.start()
    service = make_service(tmp_path, "hi")
    await service.start()
    server = OpsServer(service)
    port = await server.start()
    settings = TelegramSettings(
        _env_file=None, token=fake.token, api_base_url=fake.base_url, file_base_url=fake.base_file_url,
        shutdown_grace_s=0,
    )  # fmt: skip
    task = asyncio.create_task(run_telegram(service, settings))
    try:
        ready = await until(lambda: _status_if(port, 200))
        assert ready.json()["checks"]["platforms"]["detail"] == "connected: telegram"
        metrics.platform_connected("telegram", False)  # as after a lost connection
        not_ready = await _status_if(port, 503)
        assert not_ready is not None and "not connected: telegram" in not_ready.text
        metrics.platform_connected("telegram", True)
        # the default model's file gone: not loadable, not ready
        entry = service.registry.get(service.settings.default_model)
        service.registry.add("elsewhere", tmp_path / "missing.gguf", description="no such file")
        service.settings = service.settings.model_copy(update={"default_model": "elsewhere"})
        not_ready = await _status_if(port, 503)
        assert not_ready is not None and not not_ready.json()["checks"]["model"]["ok"]
        # a remote default model none of whose endpoints answers: not ready either
        service.registry.add("remote", urls=[f"http://127.0.0.1:{free_port()}/v1"], description="gone")
        service.settings = service.settings.model_copy(update={"default_model": "remote"})
        not_ready = await _status_if(port, 503)
        assert not_ready is not None and not_ready.json()["checks"]["model"] == {
            "ok": False,
            "detail": "remote: 0 of 1 endpoints answer",
        }
        service.settings = service.settings.model_copy(update={"default_model": entry.name})
        assert await _status_if(port, 200) is not None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        await server.close()
        await service.close()
        await fake.stop()
    assert "telegram" not in metrics.platforms  # a stopped adapter no longer counts


async def test_a_blocked_loop_is_not_alive(tmp_path):
    service = make_service(tmp_path)
    await service.start()
    server = OpsServer(service, lag_limit_s=0.3)
    port = await server.start()
    try:
        assert (await scrape(port, "/healthz")).status_code == 200
        await asyncio.sleep(0.6)  # one beat of the lag timer, so it has measured
        time.sleep(1.0)  # noqa: ASYNC251 - the point: the loop is blocked for a second
        unhealthy = await scrape(port, "/healthz")
        assert unhealthy.status_code == 503 and unhealthy.json()["loop_lag_s"] >= 0.3
        healthy = await until(lambda: _healthz_if(port, 200), timeout=10, every=0.1)
        assert healthy.json()["loop_lag_s"] < 0.3
    finally:
        await server.close()
        await service.close()


async def _healthz_if(port: int, status: int) -> httpx.Response | None:
    response = await scrape(port, "/healthz")
    return response if response.status_code == status else None


async def test_the_dashboard_uses_only_metrics_the_bot_exposes(tmp_path):
    dashboard = json.loads((Path(__file__).parents[1] / "docs" / "grafana-dashboard.json").read_text())
    service = make_service(tmp_path)
    await service.start()
    server = OpsServer(service)
    port = await server.start()
    try:
        exposed = {family.name for family in text_string_to_metric_families((await scrape(port)).text)}
    finally:
        await server.close()
        await service.close()
    targets = [target for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(targets) >= 20
    used = set()
    for target in targets:
        assert target["datasource"]["uid"] == "${datasource}"
        for name in re.findall(r"\b((?:lorabot|process)_\w+)", target["expr"]):
            used.add(re.sub(r"_(total|bucket|count|sum)$", "", name))
    assert used <= exposed, used - exposed
    titles = " ".join(panel["title"] for panel in dashboard["panels"])
    for row in ("Queue", "Latency", "Throughput", "Errors", "Ratings"):  # what issue 26 asks it to show
        assert row in titles


async def test_discord_calls_429s_replies_and_connection_are_counted(tmp_path):
    """The Discord adapter in this process against the fake Discord: every REST call the fake
    answered and each of its 429s (discord.py retries them itself) are counted, and the reply."""
    fake = FakeDiscord()
    await fake.start()
    service = make_service(tmp_path, "hello there")
    await service.start()
    settings = DiscordSettings(
        _env_file=None, token=fake.token, api_base_url=fake.api_base_url, gateway_url=fake.gateway_url,
        edit_interval_s=0.2, shutdown_grace_s=0,
    )  # fmt: skip
    client = LorabotClient(service, settings, guild_ready_timeout=0.05)

    def sample(name: str, **labels: str) -> float:  # summed over the labels not given
        wanted = {"platform": "discord", **labels}.items()
        return sum(
            found.value
            for family in metrics.REGISTRY.collect()
            for found in family.samples
            if found.name == name and wanted <= found.labels.items()
        )

    calls_before, limited_before = (
        sample("lorabot_platform_requests_total"),
        sample("lorabot_platform_rate_limited_total"),
    )
    answered_before = sample("lorabot_replies_total", model="smollm2-135m", outcome="answered")
    task = asyncio.create_task(run_discord(service, settings, client=client))
    try:
        await asyncio.wait_for(client.wait_until_ready(), 10)
        assert metrics.platforms == {"discord": True}
        fake.fail_next("POST", r"/channels/\d+/messages$", status=429, retry_after=0.2, times=2)
        message = await fake.user_message("hi", mention_bot=True)
        await fake.wait_until(lambda: fake.replies_to(message["id"]), timeout=15)
        await until(
            lambda: (
                sample("lorabot_replies_total", model="smollm2-135m", outcome="answered") > answered_before
            )
        )
        await client.wait_idle()
        rest_calls = len(fake.calls)
        assert sample("lorabot_platform_requests_total") - calls_before == rest_calls
        assert sample("lorabot_platform_rate_limited_total") - limited_before == 2
        assert sum(1 for call in fake.calls if call.status == 429) == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        await service.close()
        await fake.close()
    assert "discord" not in metrics.platforms


async def test_remote_failover_backpressure_and_endpoint_health_are_counted(tmp_path):
    """A remote default model on two endpoints: the first refuses connections (down: the request
    fails over), the second answers 429 once, then the reply. Counted, and shown per endpoint."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    model = "remote"

    def sample(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    failovers = sample("lorabot_remote_failovers_total", model=model)
    backpressure = sample("lorabot_remote_backpressure_total", model=model)
    async with fake_openai_servers() as make:
        alive = await make([(429, {"Retry-After": "0"})])
        async with remote_service(tmp_path, [dead, alive.url], remote_backoff_s=0.05) as service:
            done = [event async for event in service.reply("c1", "u1", "hi") if isinstance(event, Done)]
            assert done and done[0].text
            async with OpsServer(service) as server:
                scraped = samples((await scrape(server.port)).text)
                ready = (await scrape(server.port, "/readyz")).json()
    assert sample("lorabot_remote_failovers_total", model=model) == failovers + 1
    assert sample("lorabot_remote_backpressure_total", model=model) == backpressure + 1
    assert value(scraped, "lorabot_remote_endpoint_up", model=model, endpoint=dead) == 0
    assert value(scraped, "lorabot_remote_endpoint_up", model=model, endpoint=alive.url) == 1
    assert value(scraped, "lorabot_model_loaded", model=model) == 1
    assert ready["checks"]["model"] == {"ok": True, "detail": "remote: 1 of 2 endpoints up"}


async def test_ratings_and_deferred_writes_are_counted(tmp_path, postgres_server, postgres_url):
    service = make_service(tmp_path, "an answer", database_url=postgres_url)
    await service.start()
    model = service.settings.default_model

    def sample(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    up, down = (
        sample("lorabot_ratings_total", model=model, value="up"),
        sample("lorabot_ratings_total", model=model, value="down"),
    )
    deferred = sample("lorabot_store_deferred_writes_total")
    server = OpsServer(service)
    port = await server.start()
    try:
        turns = []
        for user in ("u1", "u2"):
            async for event in service.reply(f"c-{user}", user, "hi"):
                if isinstance(event, Accepted):
                    turns.append(event.turn_id)
        await service.rate(turns[0], "u1", 1)
        await service.rate(turns[1], "u2", -1)
        assert await service.feedback_flushed()
        assert sample("lorabot_ratings_total", model=model, value="up") == up + 1
        assert sample("lorabot_ratings_total", model=model, value="down") == down + 1
        store = service.history
        assert store is not None
        turn = await store.begin_turn("c-outage", "during the outage")
        postgres_server.stop_server()
        try:
            assert not await store.finish_turn(turn, "answered", "kept")  # kept for later
            assert sample("lorabot_store_deferred_writes_total") == deferred + 1
            scraped = samples((await scrape(port)).text)
            assert value(scraped, "lorabot_store_deferred_writes_waiting") == 1
        finally:
            postgres_server.start_server()
        await store.begin_turn("c-outage", "after")  # the kept write goes in first
        scraped = samples((await scrape(port)).text)
        assert value(scraped, "lorabot_store_deferred_writes_waiting") == 0
    finally:
        await server.close()
        await service.close()
