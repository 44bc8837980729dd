"""ChatService through the real core (queue, history, limits, models) over a scripted engine."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3

import pytest
import sqlalchemy

from core.errors import Busy, EmptyMessage, GenerationTimeout, RateLimited, UnknownModel
from core.events import Accepted, Delta, Done, Notice, Queued, Started
from core.history import ConversationStore
from core.service import InterruptedReply
from support.engines import make_service
from support.waiting import until


async def collect(service, conversation="c1", user="u1", text="hi", **kwargs):
    events = [event async for event in service.reply(conversation, user, text, **kwargs)]
    return events, next(e for e in events if isinstance(e, Done))


async def test_reply_streams_and_remembers(tmp_path):
    async with make_service(tmp_path, reply="one two three") as service:
        events, done = await collect(service, text="first")
        assert isinstance(events[0], Accepted)  # the question is stored before anything else
        assert [type(e) for e in events if not isinstance(e, Delta)] == [Accepted, Started, Done]
        assert "".join(e.text for e in events if isinstance(e, Delta)) == done.text == "one two three"
        await collect(service, text="second")
        request = service.engines["smollm2-135m"].requests[-1]
        assert [m["role"] for m in request.messages] == ["system", "user", "assistant", "user"]
        assert request.messages[1]["content"] == "first" and request.messages[-1]["content"] == "second"


@pytest.mark.parametrize("text", ["", "   \n\t ", "\x00\x01\x7f"])
async def test_empty_message_is_refused_politely(tmp_path, text):
    async with make_service(tmp_path) as service:
        with pytest.raises(EmptyMessage) as caught:
            await collect(service, text=text)
        assert "empty" in caught.value.user_message


async def test_huge_message_is_trimmed_with_notice(tmp_path):
    async with make_service(tmp_path, reply="ok", max_input_chars=4000) as service:
        events, done = await collect(service, text="abcd " * 19_999 + "abcde")
        notices = [e.text for e in events if isinstance(e, Notice)]
        assert notices and "100,000" in notices[0]
        sent = service.engines["smollm2-135m"].requests[-1].messages[-1]["content"]
        assert len(sent) <= 4000 and done.text == "ok"


async def test_control_characters_and_lone_surrogates_are_cleaned(tmp_path):
    async with make_service(tmp_path, reply="fine") as service:
        _, done = await collect(service, text="he\x00llo \ud800wor\x1bld\u200b")
        sent = service.engines["smollm2-135m"].requests[-1].messages[-1]["content"]
        assert sent == "hello \ufffdworld"
        sent.encode("utf-8")  # would raise on a surrogate
        assert done.text == "fine"


async def test_unknown_model_lists_valid_names(tmp_path):
    async with make_service(tmp_path, models={"tuned": "tuned says hi"}) as service:
        with pytest.raises(UnknownModel) as caught:
            await service.set_model("c1", "gpt-9")
        assert "smollm2-135m" in caught.value.user_message and "tuned" in caught.value.user_message


async def test_model_switch_is_per_conversation_and_survives_restart(tmp_path):
    async with make_service(tmp_path, reply="base", models={"tuned": "tuned"}) as service:
        await service.set_model("c1", "tuned")
        assert (await collect(service, "c1"))[1].text == "tuned"
        assert (await collect(service, "c2"))[1].text == "base"
        await service.set_scope_default("guild", "tuned")
        assert (await collect(service, "c3", scope_id="guild"))[1].text == "tuned"
    async with make_service(tmp_path, reply="base", models={"tuned": "tuned"}) as service:
        assert await service.current_model("c1") == "tuned"
        assert [m["content"] for m in await service.history.recent("c1", 10)] == ["hi", "tuned"]


async def test_full_queue_says_busy(tmp_path):
    async with make_service(
        tmp_path, reply="a b c d e f", token_delay_s=0.05, queue_max=1, parallel=1
    ) as service:
        first = asyncio.create_task(collect(service, "c1", "u1"))
        await until(lambda: service.scheduler.running == 1)
        second = asyncio.create_task(collect(service, "c2", "u2"))
        await until(lambda: service.scheduler.waiting == 1)
        with pytest.raises(Busy):
            await collect(service, "c3", "u3")
        assert (await first)[1].text == (await second)[1].text == "a b c d e f"


async def test_admission_estimates_the_place_the_question_really_gets(tmp_path):
    """u2's second question waits behind everyone's first, so a new user is told (and judged on)
    their own place — 2nd — not the length of the whole queue (3)."""
    async with make_service(
        tmp_path, reply="a b c d e f", token_delay_s=0.2, parallel=1, max_wait_s=25, max_waiting_per_user=3
    ) as service:
        service._reply_seconds.extend([10.0] * 5)  # 10 s a reply, one at a time: 10 s per place
        running = asyncio.create_task(collect(service, "c1", "u1"))
        await until(lambda: service.scheduler.running == 1)
        waiting = [asyncio.create_task(collect(service, f"c2{i}", "u2")) for i in range(2)]
        await until(lambda: service.scheduler.waiting == 2)
        events = service.reply("c3", "u3", "hi")
        queued = [event async for event in _until_queued(events)]
        assert queued[-1].position == 2  # behind u2's first question only: about 20 s, accepted
        await events.aclose()
        service._reply_seconds.extend([20.0] * 50)  # now 20 s per place: 2nd place is 40 s > 25 s
        with pytest.raises(Busy) as refused:
            await collect(service, "c4", "u4")
        assert refused.value.wait_s == pytest.approx(40.0)
        for task in (running, *waiting):
            task.cancel()


async def _until_queued(events):
    async for event in events:
        yield event
        if isinstance(event, Queued):
            return


async def test_cancel_mid_stream_stops_engine_and_stores_nothing(tmp_path):
    words = " ".join(f"w{i}" for i in range(200))
    async with make_service(tmp_path, reply=words, token_delay_s=0.01) as service:
        seen = 0
        async for event in service.reply("c1", "u1", "go"):
            if isinstance(event, Delta):
                seen += 1
                if seen == 5:
                    break
        await until(lambda: service.scheduler.running == 0 and service.scheduler.waiting == 0)
        assert await service.history.recent("c1", 10) == []
        assert service.engines["smollm2-135m"].emitted.count("c1") < 50  # the engine stopped early
        # the next request runs at once: the worker thread is free again
        assert (await collect(service, "c2"))[1].text == words


async def test_cancelling_consumer_task_leaves_queue(tmp_path):
    async with make_service(tmp_path, reply="x " * 50, token_delay_s=0.02, parallel=1) as service:
        running = asyncio.create_task(collect(service, "c1", "u1"))
        await until(lambda: service.scheduler.running == 1)
        queued = asyncio.create_task(collect(service, "c2", "u2"))
        await until(lambda: service.scheduler.waiting == 1)
        queued.cancel()
        await until(lambda: service.scheduler.waiting == 0)
        await running


async def test_same_user_two_conversations_at_once(tmp_path):
    async with make_service(
        tmp_path, reply=lambda r: f"answer to {r.messages[-1]['content']}", token_delay_s=0.01
    ) as service:
        (_, a), (_, b) = await asyncio.gather(
            collect(service, "dm", "u1", "alpha"), collect(service, "group", "u1", "beta")
        )
        assert (a.text, b.text) == ("answer to alpha", "answer to beta")
        assert [m["content"] for m in await service.history.recent("dm", 5)] == ["alpha", "answer to alpha"]
        assert [m["content"] for m in await service.history.recent("group", 5)] == ["beta", "answer to beta"]


async def test_queue_positions_are_reported(tmp_path):
    async with make_service(tmp_path, reply="a b c", token_delay_s=0.05, parallel=1) as service:
        tasks = []
        for i in range(4):  # one at a time, so the arrival order is known
            tasks.append(asyncio.create_task(collect(service, f"c{i}", f"u{i}")))
            await until(lambda i=i: service.scheduler.running + service.scheduler.waiting >= i + 1)
        results = await asyncio.gather(*tasks)
        positions = [[e.position for e in events if isinstance(e, Queued)] for events, _ in results]
        assert positions[0] == [] and positions[1][0] == 1
        assert positions[3] == [3, 2, 1]  # moved up as the queue drained
        assert all(done.text == "a b c" for _, done in results)


async def test_rate_limit(tmp_path):
    async with make_service(tmp_path, reply="ok", rate_limit_messages=2, rate_limit_period_s=60) as service:
        await collect(service)
        await collect(service)
        with pytest.raises(RateLimited) as caught:
            await collect(service)
        assert caught.value.retry_after > 1
        await collect(service, user="someone-else")


async def test_generation_timeout(tmp_path):
    async with make_service(
        tmp_path, reply="slow " * 100, token_delay_s=0.05, generation_timeout_s=0.3
    ) as service:
        with pytest.raises(GenerationTimeout):
            await collect(service)
        assert service.scheduler.running == 0


async def test_reset_forgets_history_and_engine_state(tmp_path):
    async with make_service(tmp_path) as service:
        await collect(service, "c1")
        assert await service.reset("c1") == 2
        assert await service.history.recent("c1", 10) == []
        assert service.engines["smollm2-135m"].forgotten == ["c1"]


async def test_engine_is_only_used_from_one_thread(tmp_path):
    async with make_service(tmp_path, reply="a b") as service:
        await asyncio.gather(*(collect(service, f"c{i}", f"u{i}") for i in range(5)))
        assert len(service.engines["smollm2-135m"].thread_ids) == 1


async def test_history_trimmed_to_context_window(tmp_path):
    async with make_service(
        tmp_path, reply="reply " * 30, max_new_tokens=50, rate_limit_messages=100, context_length=1024
    ) as service:
        engine_window = 1024
        for i in range(40):
            await collect(service, text=f"message {i} " + "pad " * 60)
        request = service.engines["smollm2-135m"].requests[-1]
        engine = service.engines["smollm2-135m"]
        assert engine.count_tokens(request.messages) <= engine_window - 50
        assert request.messages[0]["role"] == "system" and request.messages[-1]["content"].startswith(
            "message 39"
        )
        assert len(request.messages) < 40


async def test_close_drains_running_reply(tmp_path):
    service = make_service(tmp_path, reply="a b c d", token_delay_s=0.05)
    await service.start()
    task = asyncio.create_task(collect(service))
    await until(lambda: service.scheduler.running == 1)
    await service.close(drain_timeout_s=5)
    assert (await task)[1].text == "a b c d"


async def test_history_window_moves_in_jumps_to_keep_the_cached_prefix(tmp_path):
    async with make_service(tmp_path, history_max_turns=4) as service:
        store = service.history
        windows = []
        for turn in range(8):
            await store.add_turn("c", f"q{turn}", f"a{turn}")
            windows.append([m["content"] for m in await store.recent("c", 4) if m["role"] == "user"])
        assert windows[3] == ["q0", "q1", "q2", "q3"]
        assert windows[4] == ["q2", "q3", "q4"] and windows[5] == ["q2", "q3", "q4", "q5"]  # same start
        assert windows[6] == ["q4", "q5", "q6"]
        assert all(len(w) <= 4 for w in windows)


async def test_parallel_replies_are_generated_together(tmp_path):
    async with make_service(tmp_path, reply="a b c d e f g h", token_delay_s=0.02, parallel=3) as service:
        results = await asyncio.gather(*(collect(service, f"c{i}", f"u{i}") for i in range(3)))
        assert all(done.text == "a b c d e f g h" for _, done in results)
        # tokens of the three replies were produced in turns, not one reply after the other
        emitted = service.engines["smollm2-135m"].emitted
        switches = sum(a != b for a, b in itertools.pairwise(emitted))
        assert switches > 2, emitted  # one after the other would switch exactly twice


async def test_parallel_must_fit_the_kv_slots(tmp_path):
    from core.settings import SettingsError, load_core_settings

    with pytest.raises(SettingsError, match="LORABOT_PARALLEL .9. must not exceed LORABOT_KV_SLOTS .8."):
        load_core_settings(data_dir=tmp_path, parallel=9, kv_slots=8)


async def test_close_without_patience_marks_running_reply_interrupted(tmp_path):
    service = make_service(tmp_path, reply="w " * 300, token_delay_s=0.01)
    await service.start()
    task = asyncio.create_task(collect(service))
    await until(lambda: service.engines.get("smollm2-135m") and service.engines["smollm2-135m"].emitted)
    await service.close(drain_timeout_s=0)
    events, done = await task
    assert done.finish_reason == "interrupted" and 0 < len(done.text) < len("w " * 300)


async def test_models_load_lazily_and_least_recently_used_is_unloaded(tmp_path):
    async with make_service(
        tmp_path, reply="base", models={"m2": "two", "m3": "three"}, max_loaded_models=2
    ) as service:
        assert service.pool.loaded == []  # nothing loads before it is needed
        for conversation, model in (("c1", "smollm2-135m"), ("c2", "m2"), ("c3", "m3")):
            if model != "smollm2-135m":
                await service.set_model(conversation, model)
            await collect(service, conversation)
        assert service.pool.loaded == ["m2", "m3"]
        assert service.engines["smollm2-135m"].closed and not service.engines["m2"].closed
        assert (await collect(service, "c1"))[1].text == "base"  # reloads on demand
        assert service.pool.loaded == ["m3", "smollm2-135m"]


async def test_reregistering_a_name_with_a_new_file_reloads_it(tmp_path):
    async with make_service(tmp_path, models={"tuned": "tuned"}) as service:
        await service.set_model("c1", "tuned")
        await collect(service, "c1")
        first = service.engines["tuned"]
        new_file = tmp_path / "tuned-v2.gguf"
        new_file.write_bytes(b"GGUF")
        service.registry.add("tuned", new_file)
        await collect(service, "c1")
        assert first.closed and service.engines["tuned"] is not first


# -- turns: stored when accepted, settled when the reply ends ------------------------------------
async def test_question_is_stored_when_accepted_and_answered_when_done(tmp_path):
    async with make_service(tmp_path, reply="a b c d e f", token_delay_s=0.02) as service:
        events = service.reply("c1", "u1", "the question")
        first = await anext(events)
        assert isinstance(first, Accepted)
        assert await service.history.turn_state(first.turn_id) == "pending"
        assert await service.history.recent("c1", 10) == []  # not in the model's context yet
        rest = [event async for event in events]
        assert isinstance(rest[-1], Done)
        assert await service.history.turn_state(first.turn_id) == "answered"
        stored = [m["content"] for m in await service.history.recent("c1", 10)]
        assert stored == ["the question", "a b c d e f"]


async def test_cancelled_reply_is_marked_interrupted_and_kept_out_of_context(tmp_path):
    def reply(request):
        return "w " * 200 if request.messages[-1]["content"] == "go" else "short"

    async with make_service(tmp_path, reply=reply, token_delay_s=0.01) as service:
        turn_id = None
        async with contextlib.aclosing(service.reply("c1", "u1", "go")) as events:  # as the adapters do
            async for event in events:
                if isinstance(event, Accepted):
                    turn_id = event.turn_id
                if isinstance(event, Delta):
                    break
        assert await service.history.turn_state(turn_id) == "interrupted"
        await collect(service, "c1", text="again")
        request = service.engines["smollm2-135m"].requests[-1]
        assert [m["content"] for m in request.messages[1:]] == ["again"]


async def test_consumer_task_cancelled_mid_reply_still_records_the_turn(tmp_path):
    async with make_service(tmp_path, reply="w " * 200, token_delay_s=0.01) as service:
        accepted: list[int] = []

        async def consume():
            async for event in service.reply("c1", "u1", "go"):
                if isinstance(event, Accepted):
                    accepted.append(event.turn_id)

        task = asyncio.create_task(consume())
        await until(lambda: service.engines.get("smollm2-135m") and service.engines["smollm2-135m"].emitted)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await service.history.turn_state(accepted[0]) == "interrupted"


async def test_timed_out_reply_is_marked_failed(tmp_path):
    slow = {"reply": "slow " * 100, "token_delay_s": 0.05, "generation_timeout_s": 0.3}
    async with make_service(tmp_path, **slow) as service:
        events = service.reply("c1", "u1", "hi")
        accepted = await anext(events)
        with pytest.raises(GenerationTimeout):
            async for _ in events:
                pass
        assert await service.history.turn_state(accepted.turn_id) == "failed"
        assert await service.history.recent("c1", 10) == []


async def test_record_delivery_and_take_interrupted_after_a_killed_process(tmp_path):
    # what a killed process leaves: an accepted question, part of its reply shown, never settled
    # (tests/faults/test_store_faults.py does it with a real SIGKILL)
    store = ConversationStore(tmp_path / "data" / "history.sqlite3")
    turn_id = await store.begin_turn("telegram:5", "tell me")
    await store.record_delivery(turn_id, "telegram", ["5:77"], "w ")
    await store.record_delivery(turn_id, "telegram", ["5:77", "5:78"], "w w ")  # the latest one counts
    await store.close()
    async with make_service(tmp_path) as service:
        assert await service.history.turn_state(turn_id) == "interrupted"
        assert await service.take_interrupted("discord") == []
        assert await service.take_interrupted("telegram") == [
            InterruptedReply(turn_id, conversation_id="telegram:5", handles=["5:77", "5:78"], shown="w w ")
        ]
        assert await service.take_interrupted("telegram") == []  # returned once
        assert await service.history.recent("telegram:5", 10) == []


async def test_interrupted_turn_without_handles_is_not_returned(tmp_path):
    store = ConversationStore(tmp_path / "data" / "history.sqlite3")
    await store.begin_turn("c1", "never shown")
    await store.close()
    async with make_service(tmp_path) as service:
        assert await service.take_interrupted("telegram") == []


async def test_reset_forgets_pending_turns(tmp_path):
    async with make_service(tmp_path, reply="w " * 20, token_delay_s=0.01) as service:
        events = service.reply("c1", "u1", "go")
        turn_id = (await anext(events)).turn_id
        assert await service.reset("c1") == 1
        assert await service.history.turn_state(turn_id) is None
        async for _ in events:  # the reply still ends normally, and stores nothing
            pass
        assert await service.history.recent("c1", 10) == []


async def test_old_history_is_pruned(tmp_path):
    async with make_service(tmp_path, history_keep_days=30) as service:
        await service.history.add_turn("c1", "old", "old answer")
        await service.history.add_turn("c1", "new", "new answer")
    with sqlite3.connect(tmp_path / "data" / "history.sqlite3") as db:
        db.execute("UPDATE turns SET created_at = created_at - 31 * 86400 WHERE question = 'old'")
    async with make_service(tmp_path, history_keep_days=0) as service:  # 0 keeps everything
        assert len(await service.history.recent("c1", 10)) == 4
    async with make_service(tmp_path, history_keep_days=30) as service:  # pruned at start
        assert [m["content"] for m in await service.history.recent("c1", 10)] == ["new", "new answer"]


async def test_recent_reads_only_the_window(tmp_path):
    async with make_service(tmp_path) as service:
        for turn in range(31):
            await service.history.add_turn("c", f"q{turn}", f"a{turn}")
        statements: list[tuple[str, object]] = []

        def trace(_conn, _cursor, statement, parameters, _context, _many):
            statements.append((statement, parameters))

        engine = service.history.engine.sync_engine
        sqlalchemy.event.listen(engine, "before_cursor_execute", trace)
        window = await service.history.recent("c", 4)  # 31 turns: the window jumped to q28 (steps of 2)
        assert [m["content"] for m in window if m["role"] == "user"] == ["q28", "q29", "q30"]
        sqlalchemy.event.remove(engine, "before_cursor_execute", trace)
        # the window is read with LIMIT 3 (a bound parameter), not all 31 turns
        assert any("LIMIT" in sql and 3 in tuple(params) for sql, params in statements), statements
