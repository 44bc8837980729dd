"""The live A/B (core/ab.py, `lorabot models ab`, the report's comparison) over the real core and
store: two real processes on one database route every conversation alike, the share is honoured,
a conversation's own /model choice wins, a stop (or a start) reaches a running service without a
restart, the report's significance verdict, and a v4 database migrated to v5, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from core import ab, schema
from core.commands import Where, run_command
from core.events import Accepted, Done
from core.feedback_report import AbArmResult, ab_comparison, two_proportion_z
from core.history import ConversationStore
from core.service import ChatService
from lorabot.cli import app
from support.engines import make_service
from support.waiting import until

ROOT = Path(__file__).resolve().parents[1]
NAME, CANDIDATE = "smollm2-135m", "cand"  # the embedded default, and a second name for it
ALICE = "discord:1001"


def service_for(tmp_path: Path, url: str | None = None, **overrides: object) -> ChatService:
    url = url or f"sqlite:///{tmp_path / 'data' / 'history.sqlite3'}"
    return make_service(
        tmp_path,
        reply="control answer",
        models={CANDIDATE: "candidate answer", "other": "other answer"},
        database_url=url,
        rate_limit_messages=10_000,
        **overrides,
    )


async def answer(service: ChatService, conversation: str, user: str = ALICE) -> tuple[int, str]:
    """Ask in `conversation`; (turn id, the model that answered)."""
    events = [event async for event in service.reply(conversation, user, "hi")]
    turn = next(e.turn_id for e in events if isinstance(e, Accepted))
    return turn, next(e.model for e in events if isinstance(e, Done))


async def lorabot(service: ChatService, tmp_path: Path, *args: str, code: int = 0) -> str:
    """`lorabot ARGS` on the service's database and models file, in a thread (the CLI runs an event
    loop of its own); its output."""
    env = {
        "LORABOT_DATA_DIR": str(tmp_path / "data"),
        "LORABOT_DATABASE_URL": service.settings.resolved_database_url,
        "COLUMNS": "250",
    }
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
    assert result.exit_code == code, result.output
    return result.output


def always(value: float):
    return lambda: value


# -- two real processes on one database ------------------------------------------------------------
ROUTER = """
import asyncio, json, sys
from pathlib import Path
from core.events import Done
from support.engines import make_service

async def main():
    service = make_service(
        Path(sys.argv[1]), models={"cand": "candidate answer"}, database_url=sys.argv[2],
        rate_limit_messages=10000,
    )
    async with service:
        print("ready", flush=True)
        order = (await asyncio.to_thread(sys.stdin.readline)).split()
        served = {}
        for conversation in order:
            events = [e async for e in service.reply(conversation, "user", "hi")]
            served[conversation] = next(e.model for e in events if isinstance(e, Done))
        print(json.dumps(served), flush=True)

asyncio.run(main())
"""


async def test_two_processes_route_every_conversation_alike(tmp_path, store_url):
    """Two bot processes (the real core over the scripted engine), started before the test, answer
    the same 60 conversations at once in opposite orders: each conversation gets one model in
    both, the one stored as its arm, while each process draws arms with its own random numbers."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LORABOT_")},
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    }
    bots = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ROUTER,
            str(tmp_path / name),
            store_url,
            cwd=tmp_path,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        for name in ("first", "second")
    ]
    try:
        for bot in bots:
            async with asyncio.timeout(120):
                assert (await bot.stdout.readline()).decode().strip() == "ready"
        async with service_for(tmp_path, store_url) as service:
            output = await lorabot(service, tmp_path, "models", "ab", NAME, CANDIDATE, "--share", "0.5")
            assert "Started the A/B test" in output
            conversations = [f"telegram:{n}" for n in range(60)]
            for bot, order in zip(bots, (conversations, conversations[::-1]), strict=True):
                bot.stdin.write((" ".join(order) + "\n").encode())
                await bot.stdin.drain()
            served = []
            for bot in bots:
                async with asyncio.timeout(300):
                    served.append(json.loads(await bot.stdout.readline()))
            first, second = served
            assert first == second and len(first) == 60
            assert set(first.values()) == {NAME, CANDIDATE}  # both arms (each has 60 draws at 1/2)
            for conversation, model in first.items():
                arm = await ab.arm_of(service._store, conversation)
                assert arm is not None and (CANDIDATE if arm == "candidate" else NAME) == model
                assert await service.current_model(conversation) == model  # this process agrees too

            async def models_of_turns(db):
                query = sa.select(schema.turns.c.conversation_id, schema.turns.c.model)
                return sorted((await db.execute(query)).all())

            recorded = await service._store.read(models_of_turns, "test")
            assert sorted(recorded) == sorted((c, m) for c, m in first.items() for _ in range(2))
    finally:
        for bot in bots:
            if bot.returncode is None:
                bot.kill()
            await bot.wait()


# -- routing ---------------------------------------------------------------------------------------
async def test_the_share_is_roughly_honoured(tmp_path):
    """400 new conversations at share 0.25: about 100 get the candidate. The band is ±40 (4.6
    standard deviations of Binomial(400, 0.25)): a false failure about once in 250 000 runs."""
    async with service_for(tmp_path) as service:
        await ab.start(service._store, NAME, CANDIDATE, 0.25)
        models = [await service.current_model(f"c{n}") for n in range(400)]
        to_candidate = models.count(CANDIDATE)
        assert 60 <= to_candidate <= 140, to_candidate
        assert set(models) == {NAME, CANDIDATE}
        test = await ab.running_test(service._store)
        assert await ab.arm_counts(service._store, test) == {
            "control": 400 - to_candidate,
            "candidate": to_candidate,
        }
        again = [await service.current_model(f"c{n}") for n in range(400)]
        assert again == models  # sticky


async def test_the_conversations_own_choice_wins_and_scope_defaults_are_routed(tmp_path):
    async with service_for(tmp_path) as service:
        await ab.start(service._store, NAME, CANDIDATE, 0.5)
        service.ab.draw = always(0.0)  # every new conversation draws the candidate
        shown = await run_command(service, Where("c-own", ALICE), "model", NAME)
        assert shown.text == f"Model here is now {NAME}."
        assert await answer(service, "c-own") == (1, NAME)  # its own choice, never routed
        assert await ab.arm_of(service._store, "c-own") is None  # nor counted in an arm
        assert (await answer(service, "c-default"))[1] == CANDIDATE  # the global default NAME
        await service.set_scope_default("server-1", NAME)
        assert await service.current_model("c-scope", ("channel-1", "server-1")) == CANDIDATE
        await service.set_scope_default("server-2", "other")  # a scope default of another model
        assert await service.current_model("c-other", "server-2") == "other"
        # a conversation routed already, then choosing its own model, keeps its choice
        await run_command(service, Where("c-default", ALICE), "model", NAME)
        assert (await answer(service, "c-default"))[1] == NAME
        shown = await run_command(service, Where("c-new", ALICE), "model")
        assert shown.text.startswith(f"Model here: {CANDIDATE}")  # /model shows what answers


async def test_start_change_and_stop_reach_a_running_service_without_restart(tmp_path):
    async with service_for(tmp_path) as service:
        assert (await answer(service, "c1"))[1] == NAME  # no test: the default, and the test read
        service.ab.draw = always(0.1)
        await lorabot(service, tmp_path, "models", "ab", NAME, CANDIDATE, "--share", "0.2")
        await until(lambda: _is(service.current_model("c2"), CANDIDATE))  # within the cache's second
        assert (await answer(service, "c2"))[1] == CANDIDATE
        output = await lorabot(service, tmp_path, "models", "ab", NAME, CANDIDATE, "--share", "0.05")
        assert "Changed the A/B test" in output and "keep their arm" in output
        await until(lambda: _equals(service.ab.test(), "share", 0.05))
        assert (await answer(service, "c2"))[1] == CANDIDATE  # sticky although 0.1 ≥ the new share
        assert (await answer(service, "c3"))[1] == NAME  # a new conversation: 0.1 draws control now
        output = await lorabot(service, tmp_path, "models", "ab", "--stop")
        assert f"Stopped the A/B test of {CANDIDATE} against {NAME}" in output
        await until(lambda: _is(service.current_model("c2"), NAME))
        assert (await answer(service, "c2"))[1] == NAME
        assert await ab.running_test(service._store) is None
        assert (await ab.latest_test(service._store)).stopped_at is not None  # kept for the report


async def _is(value, expected) -> bool:
    return (await value) == expected


async def _equals(value, attribute: str, expected) -> bool:
    test = await value
    return test is not None and getattr(test, attribute) == expected


async def test_bad_input_is_a_clear_error(tmp_path):
    async with service_for(tmp_path) as service:
        for args, message in [
            ((NAME, CANDIDATE), "give --share"),
            ((NAME, CANDIDATE, "--share", "1"), "between 0 and 1"),
            ((NAME, CANDIDATE, "--share", "0"), "between 0 and 1"),
            ((NAME, "missing", "--share", "0.2"), "missing is not a registered model"),
            ((NAME, NAME, "--share", "0.2"), "another model than"),
            (("--stop",), "No A/B test is running."),
            (("--promote",), "--promote and --force go with --stop"),
            (("--share", "0.3"), "--share needs NAME and CANDIDATE"),
        ]:
            output = await lorabot(service, tmp_path, "models", "ab", *args, code=2)
            assert message in output and "Traceback" not in output, output
        await lorabot(service, tmp_path, "models", "ab", NAME, CANDIDATE, "--share", "0.2")
        output = await lorabot(
            service, tmp_path, "models", "ab", "other", CANDIDATE, "--share", "0.2", code=2
        )
        assert f"an A/B test of {CANDIDATE} against {NAME} is running; stop it first" in output


# -- the report ------------------------------------------------------------------------------------
def test_two_proportion_z_test_by_hand():
    # 20 of 40 against 36 of 40: pooled 0.7, se √(0.7·0.3·(2/40)) = 0.10247, z = 0.4 / se
    z, p = two_proportion_z(20, 40, 36, 40)
    assert z == pytest.approx(3.9036, abs=1e-4) and p == pytest.approx(9.477e-5, rel=1e-3)
    assert two_proportion_z(5, 10, 5, 10) == (0.0, 1.0)
    assert two_proportion_z(10, 10, 8, 8) == (0.0, 1.0)  # all 👍 on both sides: no evidence
    assert two_proportion_z(0, 0, 3, 4) is None
    z, p = two_proportion_z(36, 40, 20, 40)
    assert z == pytest.approx(-3.9036, abs=1e-4) and p == pytest.approx(9.477e-5, rel=1e-3)
    # 50% against 60% of 100 each: pooled 0.55, se √(0.55·0.45·0.02) = 0.070356, z = 1.4213
    assert math.isclose(two_proportion_z(50, 100, 60, 100)[1], 0.1552, abs_tol=1e-4)


async def rate_arm(service: ChatService, prefix: str, draw: float, ups: int, downs: int) -> None:
    """`ups + downs` new conversations routed with `draw`, each answer rated once."""
    service.ab.draw = always(draw)
    for n in range(ups + downs):
        turn, _ = await answer(service, f"{prefix}{n}", f"user-{prefix}{n}")
        await service.rate(turn, f"rater-{prefix}{n}", 1 if n < ups else -1)
    assert await service.feedback_flushed()


async def test_the_report_says_when_the_difference_is_decided(tmp_path, store_url):
    async with service_for(tmp_path, store_url) as service:
        assert await ab_comparison(service._store) is None
        assert "No A/B test has run" in await lorabot(service, tmp_path, "feedback", "report", "--ab")
        await ab.start(service._store, NAME, CANDIDATE, 0.5)
        await rate_arm(service, "early-a", 0.9, 4, 4)  # control: 4 of 8
        await rate_arm(service, "early-b", 0.1, 8, 0)  # candidate: 8 of 8
        early = await ab_comparison(service._store)
        assert early.p_value < 0.05 and not early.decided and early.winner is None
        assert early.reason.startswith("not yet: each arm needs ≥ 30 ratings")
        await rate_arm(service, "a", 0.9, 16, 16)  # control: 20 of 40 in all
        await rate_arm(service, "b", 0.1, 28, 4)  # candidate: 36 of 40 in all
        await service.set_model("own", NAME)  # its own choice: answers and ratings left out
        turn, _ = await answer(service, "own")
        await service.rate(turn, "rater-own", -1)
        assert await service.feedback_flushed()
        decided = await ab_comparison(service._store)
        assert (decided.control.up, decided.control.ratings, decided.control.conversations) == (20, 40, 40)
        assert (decided.candidate.up, decided.candidate.ratings, decided.candidate.conversations) == (
            36,
            40,
            40,
        )
        assert decided.candidate.model_files[0].startswith("gguf:")
        assert decided.p_value == pytest.approx(9.477e-5, rel=1e-3) and decided.decided
        assert decided.winner == CANDIDATE and decided.difference == pytest.approx(0.4)
        low, high = decided.candidate.interval
        assert low == pytest.approx(0.7695, abs=1e-3) and high == pytest.approx(0.9604, abs=1e-3)
        assert decided.reason.startswith(f"decided: {CANDIDATE}'s 👍-rate is higher (p = 9.48e-05 < 0.05")
        strict = await ab_comparison(service._store, min_ratings=41)
        assert not strict.decided and "has 40" in strict.reason

        printed = json.loads(await lorabot(service, tmp_path, "feedback", "report", "--ab", "--json"))
        assert printed["decided"] and printed["winner"] == CANDIDATE
        assert printed["candidate"]["up_rate"] == 0.9 and printed["control"]["up_rate_low"] < 0.5
        table = await lorabot(service, tmp_path, "feedback", "report")
        assert "feedback per model file" in table and f"A/B: {CANDIDATE} against {NAME}, share 0.5" in table
        assert "+40.0 points, z = 3.90, p = 9.48e-05" in table and "decided:" in table
        assert json.loads(await lorabot(service, tmp_path, "models", "ab", "--json"))["decided"]
        stats = await run_command(service, Where("c1", ALICE), "stats")
        assert f"A/B (running): {CANDIDATE} gets 50% of {NAME}'s conversations" in stats.text
        assert "smollm2-135m 👍 50% (35–65%, n=40) vs cand 👍 90% (77–96%, n=40)" in stats.text

        await ab.stop(service._store)
        await rate_arm(service, "after", 0.9, 0, 5)  # after the stop: not the test's
        stopped = await ab_comparison(service._store)
        assert stopped.control.ratings == 40 and not stopped.test.running
        stats = await run_command(service, Where("c1", ALICE), "stats")
        assert "A/B" not in stats.text  # /stats shows a running test only


def test_a_tie_and_an_empty_arm_are_not_decided():
    test = ab.AbTest(1, NAME, CANDIDATE, 0.5, 0.0, 0.0, None)
    from core.feedback_report import _verdict

    same = _verdict(
        test,
        AbArmResult("control", NAME, (), 60, 30, 30),
        AbArmResult("candidate", CANDIDATE, (), 60, 31, 29),
        30,
        0.05,
    )
    assert not same.decided and same.reason.startswith("not yet: p = 0.8") and "may be chance" in same.reason
    empty = _verdict(
        test,
        AbArmResult("control", NAME, (), 10, 9, 1),
        AbArmResult("candidate", CANDIDATE, (), 0, 0, 0),
        30,
        0.05,
    )
    assert empty.p_value is None and empty.reason == f"not yet: {CANDIDATE} has no ratings"


# -- schema v5 -------------------------------------------------------------------------------------
async def test_a_v4_database_is_migrated_to_v5_with_its_rows(store_url):
    """A database as lorabot's schema v4 left it (the v1–v4 migrations, version 4 recorded), with a
    rated turn: opened by this lorabot it gains the A/B tables and keeps everything."""
    store = ConversationStore(store_url)
    async with store._writer.begin() as db:  # exactly what a v4 lorabot created
        for step in schema.MIGRATIONS[:4]:
            await step(db)
        await db.execute(sa.insert(schema.schema_version).values(version=4))
        if db.dialect.name == "sqlite":
            await db.exec_driver_sql("PRAGMA user_version = 4")
        turn = (
            await db.execute(
                sa.insert(schema.turns)
                .values(conversation_id="c1", question="q", answer="a", state="answered", model=NAME,
                        model_file="gguf:x", created_at=1e9, updated_at=1e9)
                .returning(schema.turns.c.id)
            )
        ).scalar_one()  # fmt: skip
        await db.execute(
            sa.insert(schema.ratings).values(
                turn_id=turn, version=0, rater_key="r", value=1, model=NAME, model_file="gguf:x",
                created_at=1e9, updated_at=1e9,
            )
        )  # fmt: skip
        has_ab = await db.run_sync(lambda sync: sa.inspect(sync).has_table("ab_tests"))
    await store.engine.dispose()
    assert not has_ab
    migrated = await ConversationStore.open(store_url)
    try:
        async with migrated.engine.connect() as db:
            assert await schema.stored_version(db) == schema.SCHEMA_VERSION  # v5 and any later
            assert (await db.execute(sa.select(sa.func.count()).select_from(schema.ratings))).scalar() == 1
        assert [m["content"] for m in await migrated.recent("c1", 10)] == ["q", "a"]
        test, new = await ab.start(migrated, NAME, CANDIDATE, 0.3)
        assert new and test.running and test.share == 0.3
        key = ab.conversation_key(await ab.salt(migrated), "c1")
        assert await ab.assign_arm(migrated, test, key, always(0.0)) == "candidate"
        assert await ab.assign_arm(migrated, test, key, always(0.9)) == "candidate"  # the first writer won
        with pytest.raises(ab.AbError, match="stop it first"):
            await ab.start(migrated, "other", CANDIDATE, 0.3)
        second = sa.insert(schema.ab_tests).values(
            name="x", candidate="y", share=0.5, running=1, started_at=0, changed_at=0
        )
        with pytest.raises(sa.exc.IntegrityError):  # the store itself refuses a second running test
            async with migrated.engine.begin() as db:
                await db.execute(second)
    finally:
        await migrated.close()
