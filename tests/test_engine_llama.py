"""The real embedded model through llama-cpp-python: the engine alone and through the core."""

from __future__ import annotations

import asyncio
import threading

import llama_cpp
import pytest

from core.engines.base import GenerationRequest, GenerationStats
from core.engines.llama import LlamaEngine
from core.errors import ModelLoadError
from core.events import Delta, Done
from core.registry import ModelEntry
from core.service import ChatService
from core.settings import load_core_settings

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


@pytest.fixture(scope="module")
def engine(embedded_gguf):
    settings = load_core_settings(kv_slots=3, parallel=1, context_length=1024)
    engine = LlamaEngine.load(ModelEntry(name="smol", path=embedded_gguf), settings)
    yield engine
    engine.close()


def run(engine, conversation, messages, max_new_tokens=24, cancel=None):
    stats = GenerationStats()
    request = GenerationRequest("smol", conversation, messages, max_new_tokens=max_new_tokens, temperature=0.0)
    text = "".join(engine.generate(request, cancel or threading.Event(), stats))
    return text, stats


def test_greedy_output_matches_raw_llama_cpp(engine, embedded_gguf):
    messages = [SYSTEM, {"role": "user", "content": "Explain recursion to a 5 year old."}]
    ours, stats = run(engine, "match", messages, max_new_tokens=32)
    raw = llama_cpp.Llama(str(embedded_gguf), n_ctx=1024, verbose=False)
    expected = raw.create_completion(engine.prompt_tokens(messages), max_tokens=32, temperature=0.0)
    raw.close()
    assert ours == expected["choices"][0]["text"]
    assert stats.completion_tokens == expected["usage"]["completion_tokens"] and ours.strip()


def test_next_turn_reuses_the_conversation_kv_cache(engine):
    messages = [SYSTEM, {"role": "user", "content": "Name a colour."}]
    first, stats1 = run(engine, "reuse", messages)
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And another one?"}]
    _, stats2 = run(engine, "reuse", messages)
    assert stats1.reused_tokens == 0
    # Everything up to the previous reply is already in the slot; only the new turn is read.
    assert stats2.reused_tokens >= stats1.prompt_tokens
    assert stats2.prompt_tokens - stats2.reused_tokens < 30


def test_interleaved_conversations_keep_their_own_slots(engine):
    a = [SYSTEM, {"role": "user", "content": "Tell me about cats."}]
    b = [SYSTEM, {"role": "user", "content": "Tell me about the sea."}]
    reply_a, _ = run(engine, "a", a)
    run(engine, "b", b)
    a += [{"role": "assistant", "content": reply_a}, {"role": "user", "content": "More, please."}]
    _, stats = run(engine, "a", a)
    assert stats.reused_tokens > len(engine.prompt_tokens(a[:2]))  # a's slot survived b's turn


def test_least_recently_used_slot_is_recycled(engine):
    for name in ("s1", "s2", "s3", "s4"):  # 3 slots
        run(engine, name, [SYSTEM, {"role": "user", "content": f"Hi {name}"}], max_new_tokens=4)
    held = {slot.conversation_id for slot in engine.slots}
    assert held == {"s2", "s3", "s4"}


def test_cancel_stops_within_a_token(engine):
    cancel = threading.Event()
    stats = GenerationStats()
    request = GenerationRequest("smol", "cancel", [SYSTEM, {"role": "user", "content": "Write a long story."}], max_new_tokens=200, temperature=0.0)
    pieces = []
    for piece in engine.generate(request, cancel, stats):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert stats.finish_reason == "cancelled"
    assert stats.completion_tokens <= 4


def test_truncate_to_tokens(engine):
    text = "hello world " * 500
    short = engine.truncate_to_tokens(text, 50)
    assert len(engine.model.tokenize(short.encode(), add_bos=False, special=False)) <= 50
    assert text.startswith(short) and len(short) < len(text)


def test_multibyte_text_streams_intact(engine):
    text, _ = run(engine, "utf8", [SYSTEM, {"role": "user", "content": "Répète: «café, naïve, 日本語, 🙂»"}], max_new_tokens=40)
    text.encode("utf-8")
    assert "\ufffd" not in text


async def test_core_end_to_end_with_corrupt_model_in_registry(tmp_path, embedded_gguf):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00garbage" * 100)
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("this is not a model")
    settings = load_core_settings(data_dir=tmp_path / "data", max_new_tokens=24, temperature=0.0)
    async with ChatService(settings) as service:
        service.registry.add("broken", broken)
        service.registry.add("notes", not_gguf)
        events = [e async for e in service.reply("c1", "u1", "Say hello.")]
        done = events[-1]
        assert isinstance(done, Done) and done.text.strip()
        assert "".join(e.text for e in events if isinstance(e, Delta)) == done.text
        for name, reason in (("broken", "could not load"), ("notes", "not a GGUF file")):
            await service.set_model("c2", name)
            with pytest.raises(ModelLoadError) as caught:
                async for _ in service.reply("c2", "u1", "hello?"):
                    pass
            assert name in caught.value.user_message and reason in caught.value.user_message
        # the default model is still loaded and serving
        assert service.pool.loaded == ["smollm2-135m"]
        again = [e async for e in service.reply("c1", "u1", "Thanks!")]
        assert isinstance(again[-1], Done) and again[-1].extras["reused_tokens"] > 0


async def test_core_cancel_mid_stream_real_model(tmp_path):
    settings = load_core_settings(data_dir=tmp_path / "data", max_new_tokens=300, temperature=0.0)
    async with ChatService(settings) as service:
        stream = service.reply("c1", "u1", "Write a very long story about a dragon.")
        seen = 0
        async for event in stream:
            seen += isinstance(event, Delta)
            if seen == 3:
                break
        await stream.aclose()
        assert service.scheduler.running == 0
        events = [e async for e in service.reply("c2", "u2", "Hi")]
        assert isinstance(events[-1], Done)
        assert await service.history.recent("c1", 5) == []


async def test_concurrent_replies_are_batched_and_complete(tmp_path):
    settings = load_core_settings(data_dir=tmp_path / "data", max_new_tokens=32, temperature=0.0, parallel=3)
    questions = ["What is 2+2?", "Name a fruit.", "Say hi to Bob."]
    async with ChatService(settings) as service:
        alone = []
        for i, question in enumerate(questions):
            events = [e async for e in service.reply(f"solo-{i}", "u", question)]
            alone.append(events[-1].text)

        async def ask(i: int) -> Done:
            return [e async for e in service.reply(f"batch-{i}", f"user-{i}", questions[i])][-1]

        together = await asyncio.gather(*(ask(i) for i in range(3)))
    assert all(done.text.strip() for done in together)
    # the same greedy answers whether a request ran alone or batched with others
    # (llama.cpp's batched kernels may round differently: compare the opening words)
    for alone_text, done in zip(alone, together):
        assert alone_text.split()[:3] == done.text.split()[:3]
