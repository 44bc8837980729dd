"""The real embedded model through llama-cpp-python: the engine alone and through the core."""

from __future__ import annotations

# isort: off
import core.compute  # noqa: F401  first: it sets OpenMP's wait policy before llama_cpp loads OpenMP

# isort: on
import asyncio
import math
import threading

import llama_cpp
import pytest

from core.engines.base import GenerationRequest, GenerationStats
from core.engines.llama import LlamaEngine
from core.errors import ModelLoadError
from core.events import Delta, Done
from core.handles import LocalModel
from core.registry import ModelEntry
from core.service import ChatService
from core.settings import load_core_settings
from support.waiting import until

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
COUNT = "Count from 1 to 100, separated by commas."  # greedy SmolLM2 keeps counting: a long reply


@pytest.fixture(scope="module")
def engine(embedded_gguf):
    # Without the host prompt cache slots are chosen by warmth (own, empty, least recently used);
    # tests/test_prompt_cache.py covers the placement with it.
    settings = load_core_settings(kv_slots=3, parallel=1, context_length=1024, prompt_cache_mb=0)
    engine = LlamaEngine.load(ModelEntry(name="smol", path=embedded_gguf), settings)
    yield engine
    engine.close()


def run(engine, conversation, messages, max_new_tokens=24, cancel=None):
    stats = GenerationStats()
    request = GenerationRequest(
        "smol", conversation, messages, max_new_tokens=max_new_tokens, temperature=0.0
    )
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
        _, stats = run(engine, name, [SYSTEM, {"role": "user", "content": f"Hi {name}"}], max_new_tokens=4)
    held = {slot.conversation_id for slot in engine.slots}
    assert held == {"s2", "s3", "s4"}
    # s4 took s1's slot and kept the prompt they share (the system prompt), reading only the rest
    assert stats.reused_tokens >= len(engine.prompt_tokens([SYSTEM])) - 2


def test_a_new_conversation_asking_a_cached_prompt_takes_that_slot(engine):
    question = [SYSTEM, {"role": "user", "content": "What is the tallest mountain on Earth?"}]
    for name, messages in (
        ("x1", [SYSTEM, {"role": "user", "content": "Hi x1"}]),
        ("twin-a", question),
        ("x2", [SYSTEM, {"role": "user", "content": "Hi x2"}]),
    ):
        run(engine, name, messages, max_new_tokens=4)  # the 3 slots: x1 (least recently used), twin-a, x2
    _, stats = run(engine, "twin-b", question, max_new_tokens=4)
    assert stats.reused_tokens == stats.prompt_tokens - 1  # read one token, not the prompt
    assert {slot.conversation_id for slot in engine.slots} == {"x1", "twin-b", "x2"}


def test_cancel_stops_within_a_token(engine):
    cancel = threading.Event()
    stats = GenerationStats()
    request = GenerationRequest(
        "smol",
        "cancel",
        [SYSTEM, {"role": "user", "content": "Write a long story."}],
        max_new_tokens=200,
        temperature=0.0,
    )
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
    text, _ = run(
        engine,
        "utf8",
        [SYSTEM, {"role": "user", "content": "Répète: «café, naïve, 日本語, 🙂»"}],
        max_new_tokens=40,
    )
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
    for alone_text, done in zip(alone, together, strict=True):
        assert alone_text.split()[:3] == done.text.split()[:3]


# -- prefill in chunks, batched with decoding (steps are counted, never timed) ------------------
def request(conversation, text, max_new_tokens=24):
    return GenerationRequest(
        "smol",
        conversation,
        [SYSTEM, {"role": "user", "content": text}],
        max_new_tokens=max_new_tokens,
        temperature=0.0,
    )


def drive(engine, requests):
    """begin() every request, then step() them all together until each has finished; returns
    each one's text and the number of steps taken."""
    generations = [engine.begin(r, GenerationStats()) for r in requests]
    texts = ["" for _ in requests]
    active = list(range(len(requests)))
    steps = 0
    try:
        while active:
            results = engine.step([generations[i] for i in active])
            steps += 1
            for i, (text, finished) in zip(list(active), results, strict=True):
                texts[i] += text
                if finished:
                    active.remove(i)
                    engine.end(generations[i])
    finally:
        for i in active:
            engine.end(generations[i], failed=True)
    return texts, steps


def long_text(engine, tokens):
    """A user message whose prompt is about `tokens` tokens long."""
    words = " ".join(f"item{i} is on the list;" for i in range(tokens))
    return engine.truncate_to_tokens(
        words, tokens - engine.count_tokens([SYSTEM, {"role": "user", "content": ""}])
    )


def test_prompts_arriving_together_are_read_together(engine):
    questions = ["What is 2+2?", "Name a fruit.", "Say hi to Bob."]
    generations = [
        engine.begin(request(f"together-{i}", q), GenerationStats()) for i, q in enumerate(questions)
    ]
    try:
        assert sum(len(g.pending) for g in generations) <= engine.prefill_chunk
        before = engine.steps
        engine.step(generations)
        assert engine.steps == before + 1  # one decode read all three prompts...
        assert all(g.stats.completion_tokens == 1 for g in generations)  # ...and each has its first token
    finally:
        for g in generations:
            engine.end(g, failed=True)


def test_batched_chunked_prefill_gives_the_same_greedy_tokens(engine):
    questions = [
        "Explain recursion to a 5 year old.",
        "Name three colours.",
        "What is the capital of France?",
    ]
    alone = []
    for i, question in enumerate(questions):  # one prompt at a time, read in one step
        engine.forget(f"alone-{i}")
        texts, _ = drive(engine, [request(f"alone-{i}", question)])
        alone += texts
    chunk = engine.prefill_chunk
    engine.prefill_chunk = 16  # each prompt now takes several steps, several prompts share a step
    try:
        for i in range(len(questions)):
            engine.forget(f"batched-{i}")
        together, steps = drive(engine, [request(f"batched-{i}", q) for i, q in enumerate(questions)])
    finally:
        engine.prefill_chunk = chunk
    assert all(text.strip() for text in alone)
    assert together == alone
    prompt_tokens = sum(engine.count_tokens([SYSTEM, {"role": "user", "content": q}]) for q in questions)
    assert steps >= math.ceil(prompt_tokens / 16)  # the prompts really were read in chunks


@pytest.fixture(scope="module")
def long_engine(embedded_gguf):
    settings = load_core_settings(kv_slots=4, parallel=4, context_length=2048, prefill_chunk=256)
    engine = LlamaEngine.load(ModelEntry(name="smol", path=embedded_gguf), settings)
    yield engine
    engine.close()


def test_a_long_prompt_never_pauses_replies_being_generated(long_engine):
    engine = long_engine
    chunk = engine.prefill_chunk
    decoding = [
        engine.begin(request(f"dec-{i}", COUNT, max_new_tokens=300), GenerationStats()) for i in range(3)
    ]
    text = long_text(engine, 1500)
    long_request = request("long", text, max_new_tokens=8)
    assert 1400 < engine.count_tokens(long_request.messages) < 1600
    long_gen = None
    try:
        engine.step(decoding)
        assert all(g.stats.completion_tokens == 1 for g in decoding)  # the three are generating
        long_gen = engine.begin(long_request, GenerationStats())  # ~1,500 tokens arrive
        to_read = len(long_gen.pending)
        batch = [*decoding, long_gen]
        steps = 0
        while long_gen.stats.completion_tokens == 0:
            before = [g.stats.completion_tokens for g in decoding]
            results = engine.step(batch)
            steps += 1
            # every step gives each of the three its next token: their streams never pause
            assert [g.stats.completion_tokens for g in decoding] == [n + 1 for n in before]
            assert all(not finished for _, finished in results[:3])
            assert int(engine.batch.batch.n_tokens) <= chunk + len(decoding)
        assert steps == long_gen.prefill_steps == math.ceil(to_read / chunk)  # read a chunk per step
        assert long_gen.slot.tokens[: long_gen.stats.prompt_tokens] == engine.prompt_tokens(
            long_request.messages
        )
    finally:
        for g in decoding + ([long_gen] if long_gen else []):
            engine.end(g, failed=True)


async def test_cancel_mid_prefill_frees_the_slot(embedded_gguf):
    settings = load_core_settings(kv_slots=2, parallel=2, context_length=2048, prefill_chunk=64)
    handle = LocalModel("smol")
    engine = await handle.load(
        lambda: LlamaEngine.load(ModelEntry(name="smol", path=embedded_gguf), settings)
    )
    try:
        long_request = request("cancelled", long_text(engine, 1500), max_new_tokens=8)
        stats = GenerationStats()
        stream = handle.stream(long_request, stats)
        first = asyncio.ensure_future(anext(stream))
        await until(
            lambda: engine.steps >= 2, timeout=120, every=0.001
        )  # two chunks of ~24 read: mid-prefill
        first.cancel()  # the consumer goes away: the request is cancelled on the compute thread
        with pytest.raises(asyncio.CancelledError):
            await first
        await stream.aclose()  # returns once the compute thread has dropped the request
        slot = next(slot for slot in engine.slots if slot.conversation_id == "cancelled")
        assert stats.finish_reason == "cancelled" and stats.completion_tokens == 0
        assert not any(s.busy for s in engine.slots)  # its slot is free
        read = len(slot.tokens)
        assert 0 < read < stats.prompt_tokens and read % 64 == 0  # stopped mid-prefill
        # the slot serves again: a new request (two at once, so both slots) completes, and the
        # cancelled conversation's next try reuses what was read
        stats2, stats3 = GenerationStats(), GenerationStats()
        async with asyncio.timeout(120):
            texts = await asyncio.gather(
                _collect(handle.stream(long_request, stats2)),
                _collect(handle.stream(request("other", "Say hello.", max_new_tokens=8), stats3)),
            )
        assert all(text.strip() for text in texts)
        assert stats2.reused_tokens == read
        assert not any(s.busy for s in engine.slots)
    finally:
        await handle.close()


async def _collect(stream):
    return "".join([piece async for piece in stream])


# -- reading the next turn's opening ahead, while the slot is idle ----------------------------
def _second_turn(engine, conversation, read_ahead):
    """Turn 1, then (optionally) the idle-time read-ahead, then turn 2; returns turn 2's text,
    stats and messages."""
    engine.forget(conversation)
    messages = [SYSTEM, {"role": "user", "content": "Name a colour."}]
    first, _ = run(engine, conversation, list(messages))
    slot = next(s for s in engine.slots if s.conversation_id == conversation)
    assert slot.ahead  # end() lined up the next turn's opening
    if read_ahead:
        while engine.read_ahead():
            pass
        assert not slot.ahead
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And another one?"}]
    text, stats = run(engine, conversation, messages)
    return text, stats, messages


def test_the_next_turns_opening_is_read_while_idle(engine):
    plain_text, plain, _ = _second_turn(engine, "ahead-off", read_ahead=False)
    text, stats, messages = _second_turn(engine, "ahead-on", read_ahead=True)
    assert text == plain_text and text.strip()  # the same greedy reply either way
    unread = engine.prompt_tokens(messages)[stats.reused_tokens :]
    # left for the turn itself: what the user wrote and the generation prompt, as in a first turn
    left = engine.model.detokenize(unread, special=True).decode()
    assert left.startswith("And another one?"), left
    assert (plain.prompt_tokens - plain.reused_tokens) - len(
        unread
    ) >= 4  # the template's tokens, read before


def test_an_unfinished_reply_is_not_read_ahead(engine):
    cancel = threading.Event()
    stats = GenerationStats()
    request = GenerationRequest(
        "smol",
        "ahead-cancel",
        [SYSTEM, {"role": "user", "content": COUNT}],
        max_new_tokens=50,
        temperature=0.0,
    )
    for index, _ in enumerate(engine.generate(request, cancel, stats)):
        if index == 2:
            cancel.set()
    assert stats.finish_reason == "cancelled"
    slot = next(s for s in engine.slots if s.conversation_id == "ahead-cancel")
    assert slot.ahead == []  # the stored turn is not a whole reply: nothing to guess


async def test_the_compute_thread_reads_ahead_between_turns(embedded_gguf):
    settings = load_core_settings(kv_slots=2, parallel=2, context_length=1024)
    handle = LocalModel("smol")
    engine = await handle.load(
        lambda: LlamaEngine.load(ModelEntry(name="smol", path=embedded_gguf), settings)
    )
    try:
        messages = [SYSTEM, {"role": "user", "content": "Name a colour."}]
        first_stats = GenerationStats()
        first = await _collect(
            handle.stream(request("between", "Name a colour.", max_new_tokens=16), first_stats)
        )
        slot = next(s for s in engine.slots if s.conversation_id == "between")
        read = first_stats.prompt_tokens + first_stats.completion_tokens - 1
        # the idle compute thread reads the opening on its own
        await until(lambda: not slot.ahead and len(slot.tokens) > read, timeout=60, every=0.005)
        messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And another one?"}]
        stats = GenerationStats()
        second = GenerationRequest("smol", "between", messages, max_new_tokens=8, temperature=0.0)
        assert (await _collect(handle.stream(second, stats))).strip()
        unread = engine.prompt_tokens(messages)[stats.reused_tokens :]
        assert engine.model.detokenize(unread, special=True).decode().startswith("And another one?")
    finally:
        await handle.close()


def test_reading_ahead_never_delays_a_first_token(engine):
    """An idle slot's opening rides along only in steps where nobody reads a prompt: the steps
    that end in someone's first token carry nothing else."""
    engine.forget("ahead-idle")
    run(engine, "ahead-idle", [SYSTEM, {"role": "user", "content": "Name a colour."}], max_new_tokens=8)
    idle = next(s for s in engine.slots if s.conversation_id == "ahead-idle")
    pending = list(idle.ahead)
    assert pending
    engine.forget("ahead-busy")
    generation = engine.begin(request("ahead-busy", "Name a fruit.", max_new_tokens=4), GenerationStats())
    try:
        engine.step([generation])  # reads the prompt, samples the first token
        assert generation.stats.completion_tokens == 1 and idle.ahead == pending  # not read with it
        engine.step([generation])  # a decode-only step takes the opening along
        assert idle.ahead == [] and idle.tokens[-len(pending) :] == pending
    finally:
        engine.end(generation, failed=True)
