"""Conversations that lose their KV slot get it back from host memory on their next turn."""

from __future__ import annotations

# isort: off
import core.compute  # noqa: F401  first: it sets OpenMP's wait policy before llama_cpp loads OpenMP

# isort: on
import threading

import pytest

from core.engines.base import GenerationRequest, GenerationStats
from core.engines.llama import LlamaEngine
from core.engines.prompt_cache import PromptCache, SavedState
from core.registry import ModelEntry
from core.settings import load_core_settings

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def load(path, cache_mb: int) -> LlamaEngine:
    settings = load_core_settings(kv_slots=1, parallel=1, context_length=1024, prompt_cache_mb=cache_mb)
    return LlamaEngine.load(ModelEntry(name="smol", path=path), settings)


@pytest.fixture(scope="module")
def cached(embedded_gguf):
    engine = load(embedded_gguf, 64)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def uncached(embedded_gguf):
    engine = load(embedded_gguf, 0)
    yield engine
    engine.close()


def run(engine, conversation, messages, max_new_tokens=24):
    stats = GenerationStats()
    request = GenerationRequest(
        "smol", conversation, messages, max_new_tokens=max_new_tokens, temperature=0.0
    )
    return "".join(engine.generate(request, threading.Event(), stats)), stats


def second_turn_after_eviction(engine, tag):
    """Conversation A, then B takes the only slot, then A's next turn."""
    a = [SYSTEM, {"role": "user", "content": "Tell me about cats."}]
    first, stats1 = run(engine, f"a{tag}", a)
    run(engine, f"b{tag}", [SYSTEM, {"role": "user", "content": "Tell me about the sea."}])
    a += [{"role": "assistant", "content": first}, {"role": "user", "content": "More, please."}]
    reply, stats2 = run(engine, f"a{tag}", a)
    return a, reply, stats1, stats2


def test_evicted_conversation_is_restored_and_answers_the_same(cached, uncached):
    messages, reply, stats1, stats2 = second_turn_after_eviction(cached, "1")
    assert cached.prompt_cache.restored >= 1
    # Everything A had read and written is back: only the new question is read.
    assert stats2.reused_tokens >= stats1.prompt_tokens
    assert stats2.prompt_tokens - stats2.reused_tokens < 30
    # Greedy text is token for token what a full read of the same prompt gives.
    full, full_stats = run(uncached, "fresh", messages, max_new_tokens=24)
    assert full_stats.reused_tokens < 10 and reply == full


def test_without_the_cache_the_whole_history_is_read_again(uncached):
    _, _, stats1, stats2 = second_turn_after_eviction(uncached, "2")
    assert uncached.prompt_cache.saved == 0
    # Only the system prompt that B's turn left in the slot is reused.
    assert stats2.reused_tokens < stats1.prompt_tokens - 5


def test_forget_drops_the_saved_state(cached):
    run(cached, "gone", [SYSTEM, {"role": "user", "content": "Remember the number 7."}])
    run(cached, "other", [SYSTEM, {"role": "user", "content": "Hello!"}])  # evicts "gone" to the cache
    assert "gone" in cached.prompt_cache
    cached.forget("gone")
    assert "gone" not in cached.prompt_cache


def test_cache_is_bounded_by_bytes_least_recently_used_first():
    import ctypes

    def state(size: int) -> SavedState:
        return SavedState([1, 2, 3], (ctypes.c_uint8 * size)())

    cache = PromptCache(capacity_bytes=250)
    cache.put("a", state(100))
    cache.put("b", state(100))
    cache.put("c", state(100))  # over 250: the oldest goes
    assert "a" not in cache and "b" in cache and "c" in cache and cache.size_bytes == 200
    cache.put("huge", state(300))  # larger than the whole cache: not kept, nothing else lost
    assert "huge" not in cache and len(cache) == 2
    assert cache.take("b") is not None and cache.size_bytes == 100


def request(conversation, messages, max_new_tokens=8):
    return GenerationRequest("smol", conversation, messages, max_new_tokens=max_new_tokens, temperature=0.0)


def test_busy_slots_stay_consecutive(embedded_gguf):
    """llama.cpp computes each run of consecutive sequence ids as one ubatch: a new turn takes the
    lowest idle slot, so the busy ones stay packed instead of scattering over the slots."""
    settings = load_core_settings(kv_slots=4, parallel=4, context_length=512, prompt_cache_mb=16)
    engine = LlamaEngine.load(ModelEntry(name="smol", path=embedded_gguf), settings)
    try:
        asking = {
            c: engine.begin(request(c, [SYSTEM, {"role": "user", "content": c}]), GenerationStats())
            for c in "abcd"
        }
        assert [asking[c].slot.seq_id for c in "abcd"] == [0, 1, 2, 3]
        engine.end(asking["c"])
        engine.end(asking["a"])  # idle: 0 and 2 (the least recently used); busy: 1 and 3
        new = engine.begin(request("e", [SYSTEM, {"role": "user", "content": "e"}]), GenerationStats())
        assert new.slot.seq_id == 0
        engine.end(asking["b"])
        engine.end(asking["d"])
        engine.end(new)
    finally:
        engine.close()


def test_a_conversation_moves_to_the_lowest_slot_with_its_cache(embedded_gguf):
    settings = load_core_settings(kv_slots=2, parallel=2, context_length=512, prompt_cache_mb=16)
    engine = LlamaEngine.load(ModelEntry(name="smol", path=embedded_gguf), settings)
    try:
        holder = engine.begin(request("x", [SYSTEM, {"role": "user", "content": "Hi"}]), GenerationStats())
        engine.step([holder])  # x has read its prompt: slot 0 holds its KV
        y = [SYSTEM, {"role": "user", "content": "Name a colour."}]
        first, stats1 = run(engine, "y", y)  # slot 0 is busy: y's KV is in slot 1
        engine.end(holder)
        y += [{"role": "assistant", "content": first}, {"role": "user", "content": "And another one?"}]
        _, stats2 = run(engine, "y", y)
        assert engine.slots[0].conversation_id == "y"  # moved down to slot 0 ...
        assert stats2.reused_tokens >= stats1.prompt_tokens  # ... with everything it had read
        assert "x" in engine.prompt_cache  # what slot 0 held is kept for x's next turn
    finally:
        engine.close()
