"""Remote models: lorabot answering through OpenAI-compatible inference servers.

The main path is a real `llama-cpp-python[server]` (`python -m llama_cpp.server`, the same compiled
llama-cpp-python) on the embedded model, started here on loopback: answers, streaming, cancelling,
trimming, failover when one of two endpoints is killed, and a failure mid-reply. Backpressure
(429/503), a 5xx before the first token, API keys and health checks use a tiny aiohttp server
speaking the same streaming protocol, because the real one cannot be made to answer 503.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from core.compute import compute_thread
from core.engines.base import kind_of
from core.engines.llama import LlamaEngine
from core.engines.remote import ReplyCut
from core.errors import Busy, ModelLoadError
from core.events import Done
from core.registry import ModelEntry, ModelRegistry
from core.remote.endpoints import retry_after_s
from core.remote.tokens import TOKENS_PER_MESSAGE, TOKENS_PER_PROMPT
from core.service import ChatService
from core.settings import load_core_settings
from support.fake_openai import FakeOpenAI, fake_openai_servers
from support.llama_server import SERVER_CTX, LlamaCppServer
from support.remote_service import Engines, remote_service
from support.replies import Reply
from support.timeouts import within
from support.waiting import until

pytestmark = pytest.mark.slow
WAIT_S = 120.0  # a busy 2-core machine; a hang fails the test instead of blocking the suite
COUNT = "Count from 1 to 100, separated by commas."  # greedy SmolLM2 keeps counting: a long reply


deadline = within(3 * WAIT_S)  # the whole test, shutdown included: a regression fails, never hangs


until = functools.partial(until, timeout=WAIT_S)  # this file's patience


@pytest.fixture(scope="session")
def llama_server(embedded_gguf, tmp_path_factory):
    server = LlamaCppServer(embedded_gguf, tmp_path_factory.mktemp("srv") / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


@pytest.fixture
def spare_server(embedded_gguf, tmp_path):
    """A second real server of this test's own (the test may kill it)."""
    server = LlamaCppServer(embedded_gguf, tmp_path / "spare.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


# -- a small OpenAI-compatible server whose answers the test scripts -------------------------------
ScriptedServer = FakeOpenAI  # tests/support/fake_openai.py


@pytest.fixture
async def scripted():
    async with fake_openai_servers() as make:
        yield make


# -- the service, with the production engine factory (tests/support/remote_service.py) ---------------
async def ask(service: ChatService, conversation: str, text: str, user: str | None = None) -> Reply:
    reply = Reply(service, conversation, text, user, timeout_s=WAIT_S)
    await reply.done()
    return reply


# -- the real server --------------------------------------------------------------------------------
@deadline
async def test_a_remote_model_streams_its_answer_and_gets_the_history_each_turn(tmp_path, llama_server):
    engines = Engines()
    async with remote_service(tmp_path, [llama_server.url], engines) as service:
        assert "remote" in service.model_names()  # /model offers it like a local model
        first = await ask(service, "c1", "Say hello to Ada.")
        done = await first.done()
        assert done.model == "remote" and done.text.strip()
        assert len(first.deltas) >= 3 and "".join(first.deltas) == done.text  # streamed, piece by piece
        assert done.completion_tokens == len(first.deltas)
        engine = engines.built["remote"]
        assert kind_of(engine) == "remote" and engine.tokenizer.exact  # the server's /extras/tokenize/count
        second = await (await ask(service, "c1", "And to Bob?")).done()
        assert second.text.strip()
        # The whole history is sent again: the second prompt is the first plus its answer and the
        # new question (counted by the server's tokenizer, the template's share estimated).
        added = await engine.tokenizer.count_text(done.text) + await engine.tokenizer.count_text(
            "And to Bob?"
        )
        assert second.prompt_tokens == done.prompt_tokens + added + 2 * TOKENS_PER_MESSAGE


@deadline
async def test_token_counts_come_from_the_servers_tokenizer(tmp_path, llama_server, embedded_gguf):
    engines = Engines()
    local = await compute_thread().call(
        LlamaEngine.load,
        ModelEntry(name="local", path=embedded_gguf),
        load_core_settings(kv_slots=1, parallel=1, threads=1),
    )
    try:
        async with remote_service(tmp_path, [llama_server.url], engines) as service:
            async with service.pool.use("remote") as handle:
                text = "The quick brown fox jumps over the lazy dog, again and again."
                remote_count = await engines.built["remote"].tokenizer.count_text(text)
                assert abs(remote_count - _tokens(local, text)) <= 1  # the same tokenizer, over HTTP
                messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
                counted = await handle.count_tokens(messages)
                assert counted >= local.count_tokens(messages)  # never under the real prompt
                assert counted <= local.count_tokens(messages) + 2 * TOKENS_PER_MESSAGE + TOKENS_PER_PROMPT
                cut = await handle.truncate_to_tokens(text * 10, 20)
                assert (text * 10).startswith(cut) and 10 <= _tokens(local, cut) <= 20
    finally:
        await compute_thread().call(local.close)


def _tokens(engine: LlamaEngine, text: str) -> int:
    return len(engine.model.tokenize(text.encode(), add_bos=False, special=False))


@deadline
async def test_a_long_history_is_trimmed_to_the_servers_window(tmp_path, llama_server):
    # The entry's window is the server's: a prompt over it would be refused by the server.
    async with remote_service(
        tmp_path, [llama_server.url], entry={"context_length": SERVER_CTX}, max_new_tokens=16
    ) as service:
        store = service.history
        long_answer = " ".join(f"fact{i} is about the colour of the sea" for i in range(40))  # ~400 tokens
        for turn in range(6):
            turn_id = await store.begin_turn("long", f"Question {turn}: tell me facts.")
            await store.finish_turn(
                turn_id, "answered", long_answer, question=f"Question {turn}: tell me facts."
            )
        reply = await ask(service, "long", "Thanks! Say goodbye.")
        done = await reply.done()
        assert done.text.strip()
        assert done.prompt_tokens <= SERVER_CTX - 16  # fitted, by the server's own token counts
        assert done.prompt_tokens > 400  # not everything dropped: the recent turns are still there


@deadline
async def test_cancelling_a_reply_closes_the_stream_and_the_server_stops(tmp_path, llama_server):
    engines = Engines()
    async with remote_service(tmp_path, [llama_server.url], engines, max_new_tokens=400) as service:
        disconnects = llama_server.log_text().count("Disconnected from client")
        reply = Reply(service, "cancel", COUNT, timeout_s=WAIT_S)
        await until(lambda: len(reply.deltas) >= 3)
        reply.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reply.task
        endpoint = engines.built["remote"].endpoints.all[0]
        assert endpoint.in_flight == 0
        # The server saw the client go away and stopped generating (its own log line says so) ...
        await until(lambda: llama_server.log_text().count("Disconnected from client") > disconnects)
        # ... and is free at once for the next question (it serves one request at a time).
        assert (await (await ask(service, "after", "Say hi.")).done()).text.strip()


@deadline
async def test_two_endpoints_share_requests_and_fail_over_when_one_is_killed(
    tmp_path, llama_server, spare_server
):
    engines = Engines()
    async with remote_service(tmp_path, [spare_server.url, llama_server.url], engines) as service:
        burst = [Reply(service, f"b{i}", "Say hello.", timeout_s=WAIT_S) for i in range(2)]
        for reply in burst:
            assert (await reply.done()).text.strip()
        spare, main = engines.built["remote"].endpoints.all
        assert (spare.requests, main.requests) == (1, 1)  # fewest in flight: one each
        spare_server.kill()
        # The spare was used least recently, so it is picked first: its connection fails before
        # any token, and the request is answered by the other endpoint.
        reply = await ask(service, "after-kill", "Say hello again.")
        assert (await reply.done()).text.strip()
        assert spare.requests == 2 and not spare.up and main.requests == 2
        # Marked down, it is no longer tried.
        assert (await (await ask(service, "later", "One more time.")).done()).text.strip()
        assert spare.requests == 2 and main.requests == 3


@deadline
async def test_a_server_dying_mid_reply_ends_it_with_a_clear_note(tmp_path, spare_server):
    async with remote_service(tmp_path, [spare_server.url], max_new_tokens=400) as service:
        reply = Reply(service, "cut", COUNT, timeout_s=WAIT_S)
        await until(lambda: len(reply.deltas) >= 3)
        spare_server.kill()
        with pytest.raises(ReplyCut) as caught:
            await reply.task
        assert "stopped answering in the middle of this reply" in caught.value.user_message
        assert not any(isinstance(e, Done) for e in reply.events)
        assert len(reply.deltas) >= 3  # what was shown stays shown; the adapter adds the note


# -- backpressure and faults (scripted server) -----------------------------------------------------
@pytest.mark.parametrize("status", [503, 429])
@deadline
async def test_backpressure_honours_retry_after_counts_in_the_queue_and_loses_nothing(
    tmp_path, scripted, status
):
    server = await scripted([(status, {"Retry-After": "2"})])
    async with remote_service(tmp_path, [server.url], parallel=1, kv_slots=1, max_wait_s=1.0) as service:
        first = Reply(service, "c1", "hello", timeout_s=WAIT_S)
        await until(lambda: len(server.chats) == 1)
        await until(lambda: service.pool.backpressure_s("remote") > 0)
        assert service.pool.backpressure_s("remote") <= 2.0
        # Another user now: the only endpoint asked for 2 s and the one slot is taken: the expected
        # wait is over max_wait_s, so the new question is refused with a clear busy message.
        with pytest.raises(Busy):
            async for _ in service.reply("c2", "user-2", "me too"):
                pass
        done = await first.done()  # the first question was kept and answered after the wait
        assert done.text == "Hello from the fake server."
        assert len(server.chats) == 2
        assert server.chats[1][0] - server.chats[0][0] >= 2.0  # Retry-After honoured
        assert not service.pool.backpressure_s("remote")


@deadline
async def test_a_5xx_before_the_first_token_is_retried_on_another_endpoint(tmp_path, scripted):
    broken, healthy = await scripted([(500, {})]), await scripted()
    async with remote_service(tmp_path, [broken.url, healthy.url]) as service:
        done = await (await ask(service, "c", "hi")).done()
        assert done.text == "Hello from the fake server."
        assert len(broken.chats) == 1 and len(healthy.chats) == 1


@deadline
async def test_without_a_tokenize_endpoint_counts_are_estimated(tmp_path, scripted):
    server = await scripted()
    engines = Engines()
    async with remote_service(tmp_path, [server.url], engines) as service:
        done = await (await ask(service, "c", "hello there")).done()
        tokenizer = engines.built["remote"].tokenizer
        assert not tokenizer.exact and tokenizer.api is None
        assert await tokenizer.count_text("abcdefghi") == 3  # 3 UTF-8 bytes a token
        async with service.pool.use("remote") as handle:
            assert done.prompt_tokens == await handle.count_tokens(server.chats[0][2]["messages"])
        assert server.chats[0][2]["model"] == "fake-model"  # the name the server lists


@deadline
async def test_health_checks_mark_an_endpoint_down_and_up_again(tmp_path, scripted):
    server = await scripted()
    engines = Engines(health_interval_s=0.05)
    async with remote_service(tmp_path, [server.url], engines) as service:
        async with service.pool.use("remote"):
            pass
        await ask(service, "c", "hi")
        endpoint = engines.built["remote"].endpoints.all[0]
        await server.stop()
        await until(lambda: not endpoint.up)
        port_server = ScriptedServer()
        port_server.port, port_server.url = server.port, server.url  # the same address comes back
        await port_server.start()
        try:
            await until(lambda: endpoint.up)
            assert port_server.health_checks >= 1
        finally:
            await port_server.stop()


@deadline
async def test_the_api_key_comes_from_the_environment_and_is_never_stored_or_logged(
    tmp_path, scripted, monkeypatch, caplog
):
    key = "sk-test-1234567890abcdef"
    server = await scripted(api_key=key)
    monkeypatch.setenv("LORABOT_TEST_REMOTE_KEY", key)
    caplog.set_level(logging.DEBUG)
    async with remote_service(
        tmp_path, [server.url], entry={"api_key_env": "LORABOT_TEST_REMOTE_KEY"}
    ) as service:
        done = await (await ask(service, "c", "hi")).done()
        assert done.text == "Hello from the fake server."
        assert server.chats[0][1]["Authorization"] == f"Bearer {key}"
        assert key not in service.registry.path.read_text()
        assert "LORABOT_TEST_REMOTE_KEY" in service.registry.path.read_text()
    assert key not in caplog.text
    monkeypatch.delenv("LORABOT_TEST_REMOTE_KEY")
    async with remote_service(
        tmp_path / "b", [server.url], entry={"api_key_env": "LORABOT_TEST_REMOTE_KEY"}
    ) as service:
        with pytest.raises(ModelLoadError, match="LORABOT_TEST_REMOTE_KEY"):
            async for _ in service.reply("c", "u", "hi"):
                pass


# -- registry, CLI, eval ------------------------------------------------------------------------------
def test_registry_entries_name_endpoints_instead_of_a_file(tmp_path):
    registry = ModelRegistry(tmp_path / "models.toml")
    entry = registry.add(
        "big",
        urls=["http://gpu-1:8000/v1/", "http://gpu-2:8000/v1"],
        remote_model="llama",
        api_key_env="BIG_KEY",
    )
    assert entry.is_remote and entry.path is None and entry.size_bytes is None
    again = registry.get("big")
    assert again.urls == ["http://gpu-1:8000/v1", "http://gpu-2:8000/v1"] and again.remote_model == "llama"
    (tmp_path / "models.toml").write_text('[models.both]\npath = "x.gguf"\nurls = ["http://a:1/v1"]\n')
    assert "not both" in (registry.problem or "")
    with pytest.raises(ValueError, match="credentials"):
        ModelEntry(name="x", urls=["http://user:secret@host/v1"])


def test_models_add_with_urls_and_the_list_shows_them(tmp_path, monkeypatch):
    from lorabot.cli import app

    monkeypatch.setenv("LORABOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    added = runner.invoke(
        app,
        [
            "models",
            "add",
            "big",
            "--url",
            "http://gpu-1:8000/v1",
            "--url",
            "http://gpu-2:8000/v1",
            "--api-key-env",
            "BIG_KEY",
        ],
    )
    assert added.exit_code == 0, added.output
    listed = runner.invoke(app, ["models"])
    assert "http://gpu-1:8000/v1" in listed.output and "http://gpu-2:8000/v1" in listed.output
    assert "$BIG_KEY" in listed.output
    assert runner.invoke(app, ["models", "add", "none"]).exit_code == 2  # neither a path nor --url
    bad = runner.invoke(app, ["models", "add", "bad", "--url", "ftp://x"])
    assert bad.exit_code == 2 and "not an http(s) URL" in bad.output


def test_eval_accepts_a_remote_model(tmp_path):
    from training.evaluate.runner import resolve_models

    registry = ModelRegistry(tmp_path / "models.toml")
    registry.add("big", urls=["http://gpu-1:8000/v1"])
    assert [entry.name for entry in resolve_models(registry, ["smollm2-135m", "big"])] == [
        "smollm2-135m",
        "big",
    ]


def test_retry_after_takes_seconds_or_an_http_date():
    assert retry_after_s("3") == 3.0
    assert retry_after_s(None) == 1.0 and retry_after_s("soon") == 1.0
    now = datetime(2026, 1, 1, tzinfo=UTC)
    date = (now + timedelta(seconds=7)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after_s(date, now=now) == 7.0
