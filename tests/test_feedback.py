"""Feedback in the core: ratings (coalesced, opt-out, off), 🔁 regenerate, /forget and /feedback,
on the real store (SQLite, and PostgreSQL where it matters) over the scripted engine; the real
model's regenerate is checked in test_regenerate_with_the_real_model."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest
import sqlalchemy as sa

from core import schema
from core.commands import Where, run_command
from core.errors import CannotRegenerate, GenerationTimeout
from core.events import Accepted, Done
from core.feedback import Rated
from core.service import ChatService
from support.engines import make_service
from support.waiting import until

ALICE, BOB = "discord:1001", "discord:1002"


async def ask(service: ChatService, conversation: str = "c1", user: str = ALICE, text: str = "hi") -> int:
    events = [event async for event in service.reply(conversation, user, text)]
    return next(e.turn_id for e in events if isinstance(e, Accepted))


async def regenerate(service: ChatService, turn: int, user: str = ALICE) -> Done:
    events = [event async for event in service.regenerate(turn, user)]
    return next(e for e in events if isinstance(e, Done))


async def rows(service: ChatService, table: sa.Table) -> list[sa.Row]:
    async def work(db):
        return list((await db.execute(sa.select(table))).all())

    assert service.history is not None
    return await service.history.read(work, "test")


def counter_replies():
    numbers = itertools.count(1)
    return lambda request: f"answer {next(numbers)}"


async def test_ratings_change_remove_and_count_once_per_rater(tmp_path):
    async with make_service(tmp_path) as service:
        turn = await ask(service)
        assert await service.rate(turn, ALICE, 1) is Rated.NOTED
        await service.rate(turn, BOB, 1)
        await service.rate(turn, BOB, 1)  # a duplicate press counts once
        await service.feedback_flushed()
        stored = await rows(service, schema.ratings)
        assert sorted(r.value for r in stored) == [1, 1] and len({r.rater_key for r in stored}) == 2
        assert ALICE not in {r.rater_key for r in stored}  # pseudonyms, never the platform id
        await service.rate(turn, ALICE, -1)  # changed
        await service.rate(turn, BOB, None, only_if=-1)  # removing a 👎 Bob never gave keeps his 👍
        await service.feedback_flushed()
        assert sorted(r.value for r in await rows(service, schema.ratings)) == [-1, 1]
        await service.rate(turn, BOB, None)
        await service.feedback_flushed()
        (left,) = await rows(service, schema.ratings)
        assert left.value == -1 and left.model == "smollm2-135m" and left.model_file.startswith("gguf:")


async def test_a_flood_of_toggles_is_coalesced_and_the_last_state_stored(tmp_path):
    async with make_service(tmp_path, feedback_flush_s=0.2) as service:
        turn = await ask(service)
        for index in range(200):
            await service.rate(turn, ALICE, 1 if index % 2 else -1)
            await service.rate(turn, ALICE, None) if index % 7 == 0 else None
        await service.rate(turn, ALICE, 1)
        await service.feedback_flushed()
        assert [r.value for r in await rows(service, schema.ratings)] == [1]
        assert service._writer.written < 20  # a few transactions, not one per toggle


async def test_ratings_of_unknown_or_unfinished_turns_are_ignored_and_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="core.feedback_store")
    async with make_service(tmp_path) as service:
        turn = await ask(service)
        await service.rate(turn + 99, ALICE, 1)
        await service.rate_message("discord", "1:2", ALICE, 1)
        await service.feedback_flushed()
        assert await rows(service, schema.ratings) == []
        assert "turn %s is not stored" % (turn + 99) in caplog.text
        assert "message 1:2 on discord is not a stored reply" in caplog.text
        await service.rate(turn, ALICE, 1)  # the store goes on after ignored ones
        await service.feedback_flushed()
        assert len(await rows(service, schema.ratings)) == 1


async def test_a_reaction_on_any_message_of_a_reply_finds_its_turn(tmp_path):
    async with make_service(tmp_path) as service:
        turn = await ask(service)
        await service.record_delivery(turn, "discord", ["5:10", "5:11"], "tail")
        await service.rate_message("discord", "5:10", ALICE, 1)
        await service.rate_message("discord", "5:11", BOB, -1)
        await service.feedback_flushed()
        assert {(r.turn_id, r.value) for r in await rows(service, schema.ratings)} == {(turn, 1), (turn, -1)}
        assert await service.reply_refs(turn) == ("discord", ["5:10", "5:11"])


async def test_feedback_off_for_the_bot_and_opt_out_for_one_person(tmp_path):
    async with make_service(tmp_path, feedback=False) as service:
        turn = await ask(service)
        assert await service.rate(turn, ALICE, 1) is Rated.OFF
        assert service.buttons_for_replies is not None and not service.buttons_for_replies.rate
        where = Where("c1", ALICE)
        assert "off for this whole bot" in (await run_command(service, where, "feedback", "off")).text
    async with make_service(tmp_path / "2") as service:
        turn = await ask(service)
        await service.rate(turn, ALICE, 1)
        await service.feedback_flushed()
        shown = await run_command(service, Where("c1", ALICE), "feedback", "off")
        assert "not kept" in shown.text and [c.selected for c in shown.choices] == [False, True]
        assert await rows(service, schema.ratings) == []  # opting out deletes what they gave
        assert await service.rate(turn, ALICE, 1) is Rated.OPTED_OUT
        assert await service.rate(turn, BOB, 1) is Rated.NOTED
        await service.feedback_flushed()
        assert len(await rows(service, schema.ratings)) == 1
    async with make_service(tmp_path / "2") as service:  # the choice survives a restart
        assert await service.rate(turn, ALICE, 1) is Rated.OPTED_OUT
        await run_command(service, Where("c1", ALICE), "feedback", "on")
        assert await service.rate(turn, ALICE, 1) is Rated.NOTED


async def test_regenerate_replaces_the_answer_keeps_the_old_one_and_the_context_follows(tmp_path):
    async with make_service(tmp_path, reply=counter_replies()) as service:
        turn = await ask(service, text="question")
        await service.rate(turn, BOB, -1)
        await service.feedback_flushed()
        done = await regenerate(service, turn)
        assert done.text == "answer 2"
        engine = service.engines["smollm2-135m"]
        request = engine.requests[-1]
        assert request.avoid_start == "answer 1" and request.temperature >= 0.7
        assert request.seed != engine.requests[0].seed  # sampled afresh
        assert request.messages[-1] == {"role": "user", "content": "question"}
        assert [m["role"] for m in request.messages] == ["system", "user"]  # the old answer is not context
        (old,) = await rows(service, schema.answer_versions)
        assert (old.turn_id, old.version, old.answer) == (turn, 0, "answer 1")
        (bob,) = await rows(service, schema.ratings)
        assert bob.version == 0  # Bob's 👎 stays with the answer he rated
        await service.rate(turn, ALICE, 1)
        await service.feedback_flushed()
        assert {(r.version, r.value) for r in await rows(service, schema.ratings)} == {(0, -1), (1, 1)}
        await ask(service, text="next")
        assert engine.requests[-1].messages[-2] == {"role": "assistant", "content": "answer 2"}


async def test_only_the_latest_answer_once_at_a_time(tmp_path):
    async with make_service(tmp_path, reply=counter_replies(), token_delay_s=0.05) as service:
        first = await ask(service, text="one")
        second = await ask(service, text="two")
        with pytest.raises(CannotRegenerate, match="latest"):
            await regenerate(service, first)
        with pytest.raises(CannotRegenerate, match="no longer stored"):
            await regenerate(service, second + 5)
        results = await asyncio.gather(
            regenerate(service, second), regenerate(service, second), return_exceptions=True
        )
        assert sum(isinstance(r, Done) for r in results) == 1, results
        assert sum(isinstance(r, CannotRegenerate) for r in results) == 1, results
        assert len(await rows(service, schema.answer_versions)) == 1


async def test_a_regenerate_that_fails_puts_the_old_answer_back(tmp_path):
    async with make_service(
        tmp_path, reply="the old answer stays", token_delay_s=0.2, generation_timeout_s=2
    ) as service:
        turn = await ask(service, text="q")  # 4 words at 0.2 s: within the timeout
        service.engines["smollm2-135m"].reply = "far too many words to finish in time " * 3
        with pytest.raises(GenerationTimeout):
            await regenerate(service, turn)
        assert await service.history.recent("c1", 10) == [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "the old answer stays"},
        ]
        assert await rows(service, schema.answer_versions) == []
        (row,) = await rows(service, schema.turns)
        assert (row.state, row.version) == ("answered", 0)


async def test_forget_deletes_everything_about_the_caller_on_both_backends(tmp_path, store_url):
    async with make_service(tmp_path, database_url=store_url) as service:
        mine = await ask(service, conversation="group", user=ALICE, text="alice asks")
        theirs = await ask(service, conversation="group", user=BOB, text="bob asks")
        await ask(service, conversation="dm-alice", user=ALICE, text="private")
        await service.record_delivery(mine, "telegram", ["1:1"], "x")
        await regenerate(service, theirs, BOB)
        await service.rate(theirs, ALICE, 1)  # Alice's rating of Bob's answer
        await service.rate(mine, BOB, 1)  # Bob's rating of Alice's turn goes with her turn
        await run_command(service, Where("dm-alice", ALICE), "temperature", "0.3")
        await service.feedback_flushed()
        ask_first = await run_command(service, Where("dm-alice", ALICE), "forget", "")
        assert ask_first.choices and "can't be undone" in ask_first.text
        assert len(await rows(service, schema.turns)) == 3  # nothing deleted before "yes"
        done = await run_command(service, Where("dm-alice", ALICE), "forget", "yes")
        assert "Deleted 2 question(s)" in done.text and "1 rating(s)" in done.text
        alice = service.pseudonym(ALICE)
        remaining = await rows(service, schema.turns)
        assert [(r.question, r.user_key) for r in remaining] == [("bob asks", service.pseudonym(BOB))]
        assert all(r.rater_key != alice for r in await rows(service, schema.ratings))
        assert await rows(service, schema.ratings) == []  # Bob's rating of Alice's turn went with it
        assert await rows(service, schema.reply_messages) == []
        assert [r.turn_id for r in await rows(service, schema.answer_versions)] == [theirs]
        assert await rows(service, schema.conversation_options) == []
        assert await service.current_temperature("dm-alice") == service.settings.temperature


async def test_regenerate_with_the_real_model_gives_another_answer(tmp_path, embedded_gguf):
    """The embedded model, greedy: the same question would give the same answer; 🔁 never does."""
    from core.settings import load_core_settings

    settings = load_core_settings(data_dir=tmp_path, temperature=0.0, max_new_tokens=24)
    async with ChatService(settings) as service:
        turn = await ask(service, conversation="real", text="Name a color.")
        (first,) = [r.answer for r in await rows(service, schema.turns)]
        for _ in range(3):
            done = await regenerate(service, turn)
            assert done.text.strip() and done.text != first
            first = done.text
        assert len(await rows(service, schema.answer_versions)) == 3


async def test_the_terminal_rates_and_retries_the_last_answer(tmp_path):
    import io

    from bots.console import ConsoleChat

    async with make_service(tmp_path, reply=counter_replies()) as service:
        out = io.StringIO()
        chat = ConsoleChat(service, out=out, user="alice")
        await chat.command("/good")
        assert "Nothing to rate yet" in out.getvalue()
        assert await chat.ask("hello") == "answer 1"
        await chat.command("/bad")
        await chat.command("/retry")
        assert out.getvalue().rstrip().endswith("answer 2")
        await chat.command("/good")
        await service.feedback_flushed()
        assert {(r.version, r.value) for r in await rows(service, schema.ratings)} == {(0, -1), (1, 1)}
        assert "Noted 👍" in out.getvalue() and "Noted 👎" in out.getvalue()
        await chat.command("/forget yes")
        assert "Deleted 1 question(s)" in out.getvalue()
        assert await rows(service, schema.turns) == [] and await rows(service, schema.ratings) == []


async def test_only_the_asker_regenerates_a_conversation_that_is_not_shared(tmp_path):
    async with make_service(tmp_path, reply=counter_replies()) as service:
        turn = await ask(service, conversation="channel:alice", user=ALICE)
        with pytest.raises(CannotRegenerate, match="person who asked"):
            await regenerate(service, turn, BOB)
        events = [e async for e in service.regenerate(turn, BOB, shared=True)]  # a group or a thread
        assert next(e for e in events if isinstance(e, Done)).text == "answer 2"
        accepted = next(e for e in events if isinstance(e, Accepted))
        assert (accepted.turn_id, accepted.replaces) == (turn, "answer 1")


async def test_a_reaction_that_comes_before_its_message_is_recorded_still_counts(tmp_path):
    """A reply's new message is recorded a moment after it is shown: the rating waits for it."""
    async with make_service(tmp_path) as service:
        turn = await ask(service)
        await service.rate_message("telegram", "7:70", ALICE, 1)
        pending = service._writer._pending
        await until(lambda: any(rating.tries for rating in pending.values()))  # tried once: unknown yet
        await service.record_delivery(turn, "telegram", ["7:70"], "shown")
        await service.feedback_flushed()
        assert [(r.turn_id, r.value) for r in await rows(service, schema.ratings)] == [(turn, 1)]


async def test_a_press_that_comes_before_its_answer_settles_still_counts(tmp_path):
    """The buttons ride with the final edit and the turn settles when the platform answers it:
    a quick 👍 can come first, and waits for the answer instead of being dropped."""
    async with make_service(tmp_path) as service:
        events = [e async for e in service.reply("c1", ALICE, "hi", settle_after_delivery=True)]
        turn = next(e.turn_id for e in events if isinstance(e, Accepted))
        await service.rate(turn, ALICE, 1)
        pending = service._writer._pending
        await until(lambda: any(rating.tries for rating in pending.values()))  # tried once: pending yet
        assert await rows(service, schema.ratings) == []
        await service.settle_delivery(turn, True)
        await service.feedback_flushed()
        stored = await rows(service, schema.ratings)
        assert [(r.turn_id, r.version, r.value) for r in stored] == [(turn, 0, 1)]


async def test_a_rating_given_just_before_a_regenerate_stays_with_the_old_answer(tmp_path):
    async with make_service(tmp_path, reply=counter_replies(), feedback_flush_s=5) as service:
        turn = await ask(service)
        await service.rate(turn, ALICE, 1)
        await until(lambda: service._writer.written == 1)  # the writer now pauses 5 s between rounds
        await service.rate(turn, ALICE, -1)  # changed: waiting in the writer
        await regenerate(service, turn)
        await service.feedback_flushed()
        assert [(r.version, r.value) for r in await rows(service, schema.ratings)] == [(0, -1)]
