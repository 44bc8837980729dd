"""Engine and model faults: nothing hangs, nothing crashes, no reply is cut off unnoticed.

The real embedded model runs through llama-cpp-python wherever a fault concerns it; faults are
injected by `support.faulty.FaultyEngine` (armed with predicates, so no test guesses a sleep).
Every wait has a deadline, so a regression fails here instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
from pathlib import Path

import pytest

from core.compute import compute_thread
from core.engines.base import GenerationRequest, GenerationStats
from core.engines.llama import LlamaEngine
from core.errors import EngineClosed, EngineFailed, ModelLoadError
from core.events import Done
from core.handles import LocalModel
from core.registry import ModelEntry
from core.service import ChatService
from core.settings import load_core_settings
from support.engines import make_service
from support.faulty import FaultyEngine, RecordingFactory
from support.replies import Reply
from support.timeouts import within
from support.waiting import until
from training.errors import ExportError
from training.gguf_tools import quantize, replacing

pytestmark = pytest.mark.slow
DEFAULT = "smollm2-135m"
COUNT = "Count from 1 to 100, separated by commas."  # greedy SmolLM2 keeps counting: a long reply
WAIT_S = 240.0  # generous (a busy 2-core machine); a hang fails the test instead of blocking it


deadline = within(3 * WAIT_S)  # the whole test, shutdown included: a regression fails, never hangs


until = functools.partial(until, timeout=WAIT_S)  # this file's patience


async def ask(service: ChatService, conversation: str, text: str, user: str | None = None) -> Done:
    return await Reply(service, conversation, text, user, timeout_s=WAIT_S).done()


def real_service(tmp_path: Path, factory: RecordingFactory, **overrides: object) -> ChatService:
    settings = load_core_settings(
        **{
            "data_dir": tmp_path / "data",
            "kv_slots": 2,
            "parallel": 2,
            "context_length": 512,
            "max_new_tokens": 64,
            "temperature": 0.0,
            "rate_limit_messages": 1000,
            "threads": 1,  # one llama.cpp thread: no OpenMP spinning against other processes
            **overrides,
        }
    )
    return ChatService(settings, engine_factory=factory)


def same_model_file(embedded: Path, path: Path) -> Path:
    """Another file (its own path and inode) holding the embedded model."""
    shutil.copyfile(embedded, path)
    return path


# -- the model pool ------------------------------------------------------------------------------
@deadline
async def test_two_users_on_two_models_with_one_model_slot_are_both_answered(tmp_path):
    long = " ".join(f"w{i}" for i in range(600))
    async with make_service(
        tmp_path, reply=long, models={"m2": "from m2"}, max_loaded_models=1, token_delay_s=0.005, parallel=2
    ) as service:
        await service.set_model("c2", "m2")
        first = Reply(service, "c1", "hi", timeout_s=WAIT_S)
        await until(lambda: len(first.deltas) >= 2)
        second = await ask(service, "c2", "hi")
        assert second.text == "from m2"
        if not first.task.done():  # still streaming: its model is over the cap but in use
            assert not service.engines[DEFAULT].closed
        assert (await first.done()).text == long
        assert len(service.pool.loaded) == 1  # back under the cap once idle


@deadline
async def test_reregistering_a_model_while_it_streams(tmp_path, embedded_gguf):
    v1 = same_model_file(embedded_gguf, tmp_path / "v1.gguf")
    v2 = same_model_file(embedded_gguf, tmp_path / "v2.gguf")
    factory = RecordingFactory()
    async with real_service(tmp_path, factory, max_new_tokens=80) as service:
        service.registry.add("tuned", v1)
        for conversation in ("ref", "c1", "c2"):
            await service.set_model(conversation, "tuned")
        reference = (await ask(service, "ref", COUNT)).text  # the same greedy reply, alone
        first = Reply(service, "c1", COUNT, timeout_s=WAIT_S)
        await until(lambda: len(first.deltas) >= 3)
        service.registry.add("tuned", v2)  # `lorabot models add tuned v2.gguf` while c1 streams
        second = await ask(service, "c2", "Say hello.")
        old, new = factory.engines["tuned"]
        assert [path for _, path in factory.loads] == [v1, v2]
        assert "c2" in new.begun and "c2" not in old.begun and second.text.strip()
        if not first.task.done():
            assert not old.closed  # retired, not closed: c1 still uses it
        done = await first.done()
        assert done.text == reference and done.finish_reason == "length"  # not cut off
        assert old.closed and not new.closed  # closed after its last user
        assert service.pool.loaded == ["tuned"]


@deadline
async def test_gguf_replaced_on_disk_while_loaded(tmp_path, embedded_gguf):
    model = same_model_file(embedded_gguf, tmp_path / "model-q4_k_m.gguf")
    probe = tmp_path / "probe.gguf"
    probe.write_bytes(b"old")
    inode = probe.stat().st_ino
    with replacing(probe) as tmp:
        tmp.write_bytes(b"new")
    # a write in place would get the same inode, and below it would truncate a mapped model (SIGBUS)
    assert probe.stat().st_ino != inode and probe.read_bytes() == b"new"
    factory = RecordingFactory()
    async with real_service(tmp_path, factory, max_new_tokens=80) as service:
        service.registry.add("tuned", model)
        for conversation in ("ref", "c1", "c2"):
            await service.set_model(conversation, "tuned")
        reference = (await ask(service, "ref", COUNT)).text
        with model.open("rb") as held:  # the inode the loaded model maps
            before = os.fstat(held.fileno())
            first = Reply(service, "c1", COUNT, timeout_s=WAIT_S)
            await until(lambda: len(first.deltas) >= 3)
            with replacing(model) as tmp:  # how `lorabot export` writes every GGUF
                shutil.copyfile(embedded_gguf, tmp)
            after = os.fstat(held.fileno())
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)  # not truncated
        assert after.st_nlink == 0 and model.stat().st_ino != before.st_ino  # replaced, not rewritten
        second = await ask(service, "c2", "Say hello.")
        assert factory.calls("tuned") == 2  # same path, new file: new requests load it
        old, new = factory.engines["tuned"]
        assert "c2" in new.begun and second.text.strip()
        assert (await first.done()).text == reference
        assert old.closed and not new.closed


def test_quantize_replaces_its_output_instead_of_rewriting_it(tmp_path, monkeypatch, embedded_gguf):
    import llama_cpp

    dst = tmp_path / "model-q4_k_m.gguf"
    dst.write_bytes(b"GGUF served by a running bot")
    written: list[Path] = []

    def fake_quantize(src: bytes, out: bytes, params: object) -> int:  # llama.cpp truncates its output
        written.append(Path(out.decode()))
        written[-1].write_bytes(b"GGUF new export")
        return 0

    monkeypatch.setattr(llama_cpp, "llama_model_quantize", fake_quantize)
    with dst.open("rb") as held:
        quantize(embedded_gguf, dst, "q4_k_m", threads=1)
        assert held.read() == b"GGUF served by a running bot"
    assert written[0].parent == dst.parent and written[0] != dst
    assert dst.read_bytes() == b"GGUF new export"
    monkeypatch.setattr(llama_cpp, "llama_model_quantize", lambda src, out, params: 1)
    with pytest.raises(ExportError):
        quantize(embedded_gguf, dst, "q4_k_m", threads=1)
    assert dst.read_bytes() == b"GGUF new export"  # a failed export leaves the served file alone
    assert sorted(p.name for p in tmp_path.iterdir()) == [dst.name]  # and no partial file behind


@deadline
async def test_broken_gguf_is_refused_and_not_retried_within_the_window(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    factory = RecordingFactory()
    async with real_service(tmp_path, factory) as service:
        service.registry.add("broken", broken)
        await service.set_model("c1", "broken")
        now = [1000.0]
        service.pool.clock = lambda: now[0]

        async def refused() -> str:
            with pytest.raises(ModelLoadError) as caught:
                await ask(service, "c1", "hi")
            return caught.value.user_message

        messages = [await refused() for _ in range(3)]
        assert factory.calls("broken") == 1  # remembered, not re-read on the shared thread
        assert all("'broken' could not be loaded" in text for text in messages) and len(set(messages)) == 1
        now[0] += service.pool.load_retry_s + 1
        await refused()
        assert factory.calls("broken") == 2  # the window passed: tried again
        broken.write_bytes(b"GGUF" + b"\x01" * 5000)  # a new file: tried at once
        await refused()
        assert factory.calls("broken") == 3
        assert (await ask(service, "c2", "Say hello.")).text.strip()  # the default model serves


# -- the compute thread --------------------------------------------------------------------------
@deadline
async def test_decode_error_mid_batch_fails_that_batch_and_keeps_serving(tmp_path):
    factory = RecordingFactory()
    async with real_service(tmp_path, factory, max_new_tokens=100) as service:
        assert (await ask(service, "warm", "Hi")).text.strip()
        thread = compute_thread()
        engine = factory.latest(DEFAULT)
        engine.fail_step = lambda batch: (
            RuntimeError("llama_decode returned -3")
            if len(batch) == 2 and all(g.stats.completion_tokens >= 1 for g in batch)
            else None
        )
        results = await asyncio.gather(
            ask(service, "a", COUNT), ask(service, "b", COUNT), return_exceptions=True
        )
        assert engine.fired == ["step"]
        assert all(isinstance(result, EngineFailed) for result in results), results
        assert "failed while answering" in results[0].user_message
        assert not any(slot.busy for slot in engine.slots)  # their KV slots were released
        assert (await ask(service, "c", "Say hello.")).text.strip()
        assert compute_thread() is thread and thread.alive


@deadline
async def test_malformed_engine_result_fails_that_batch_on_the_same_thread(tmp_path):
    factory = RecordingFactory()
    async with real_service(tmp_path, factory) as service:
        assert (await ask(service, "warm", "Hi")).text.strip()
        thread = compute_thread()
        engine = factory.latest(DEFAULT)
        engine.garble_step = lambda batch: all(g.stats.completion_tokens >= 1 for g in batch)
        with pytest.raises(EngineFailed):
            await ask(service, "a", COUNT)
        assert engine.fired == ["garble"] and not any(slot.busy for slot in engine.slots)
        assert (await ask(service, "b", "Say hello.")).text.strip()
        assert compute_thread() is thread and thread.alive  # the loop caught it; no restart needed


@deadline
async def test_end_raising_keeps_the_thread_serving(tmp_path):
    factory = RecordingFactory()
    async with real_service(tmp_path, factory) as service:
        assert (await ask(service, "warm", "Hi")).text.strip()
        thread = compute_thread()
        engine = factory.latest(DEFAULT)
        engine.fail_end = lambda generation: RuntimeError("llama_memory_seq_rm failed")
        done = await ask(service, "a", "Say hello.")
        assert engine.fired == ["end"] and done.text.strip()  # the reply had finished: it is kept
        assert (await ask(service, "b", "Say hello.")).text.strip()
        assert compute_thread() is thread and thread.alive


@deadline
async def test_close_raising_keeps_the_thread_serving(tmp_path, embedded_gguf):
    factory = RecordingFactory()
    async with real_service(tmp_path, factory, max_loaded_models=1) as service:
        service.registry.add("other", same_model_file(embedded_gguf, tmp_path / "other.gguf"))
        await service.set_model("b", "other")
        assert (await ask(service, "a", "Hi")).text.strip()
        thread = compute_thread()
        first = factory.latest(DEFAULT)
        first.fail_close = RuntimeError("ggml_backend_free failed")
        assert (await ask(service, "b", "Hi")).text.strip()  # loading "other" unloads the default
        assert first.fired == ["close"] and service.pool.loaded == ["other"]
        assert (await ask(service, "a", "Hi again")).text.strip()  # reloads it on the same thread
        assert factory.calls(DEFAULT) == 2 and compute_thread() is thread and thread.alive


def _request(conversation: str, text: str, max_new_tokens: int) -> GenerationRequest:
    messages = [{"role": "user", "content": text}]
    return GenerationRequest(DEFAULT, conversation, messages, max_new_tokens=max_new_tokens, temperature=0.0)


async def _load_model(path: Path) -> tuple[LocalModel, FaultyEngine]:
    settings = load_core_settings(kv_slots=2, parallel=2, context_length=512, threads=1)
    built: list[FaultyEngine] = []

    def build() -> FaultyEngine:  # on the compute thread, like every local model
        built.append(FaultyEngine(LlamaEngine.load(ModelEntry(name=DEFAULT, path=path), settings)))
        return built[0]

    handle = LocalModel(DEFAULT, path)
    await handle.load(build)
    return handle, built[0]


@deadline
async def test_a_dead_compute_thread_fails_its_requests_and_is_replaced(embedded_gguf):
    handle, engine = await _load_model(embedded_gguf)
    try:
        old_thread = compute_thread()
        engine.fail_end = lambda generation: (
            SystemExit("boom") if generation.slot.conversation_id == "short" else None
        )
        long_pieces: list[str] = []

        async def consume(conversation: str, text: str, max_new_tokens: int, into: list[str]) -> str:
            async with asyncio.timeout(WAIT_S):
                async for piece in handle.stream(
                    _request(conversation, text, max_new_tokens), GenerationStats()
                ):
                    into.append(piece)
            return "".join(into)

        long = asyncio.create_task(consume("long", COUNT, 300, long_pieces))
        await until(lambda: len(long_pieces) >= 2)
        assert (await consume("short", "Say hello.", 4, [])).strip()  # finished before the thread died
        with pytest.raises(EngineFailed):  # the one still running is told, not left waiting
            await long
        assert engine.fired == ["end"]
        new_thread = compute_thread()
        assert new_thread is not old_thread and new_thread.alive and not old_thread.alive
        assert (await consume("after", "Say hello.", 8, [])).strip()  # served by the new thread
    finally:
        await handle.close()


@deadline
async def test_a_closed_model_is_never_called(embedded_gguf):
    handle, engine = await _load_model(embedded_gguf)
    count_tokens = engine.count_tokens
    await handle.close()
    assert engine.closed
    with pytest.raises(EngineClosed):
        await handle.call(count_tokens, [{"role": "user", "content": "hi"}])
    with pytest.raises(EngineClosed):
        await anext(handle.stream(_request("c", "hi", 4), GenerationStats()))
    with pytest.raises(EngineClosed) as caught:
        handle.require_engine()
    assert "unloaded" in caught.value.user_message
