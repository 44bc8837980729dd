"""The history store on both backends: every test here runs against SQLite and against a real
PostgreSQL server the suite starts itself (tests/support/postgres.py). Turns, choices, in-flight
questions, leases across pid namespaces, and several processes on one database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from core import schema
from core.errors import ChatError, StoreUnavailable
from core.events import Accepted, Done
from core.history import ConversationStore
from core.schema import processes, turns
from core.service import InterruptedReply
from core.settings import SettingsError, load_core_settings
from core.turns import process_owner
from support.engines import make_service
from support.namespaces import unshare_works
from support.waiting import until

ROOT = Path(__file__).resolve().parents[1]


def contents(messages):
    return [m["content"] for m in messages]


async def collect(service, conversation="c1", user="u1", text="hi"):
    events = [event async for event in service.reply(conversation, user, text)]
    return events, next(e for e in events if isinstance(e, Done))


# -- turns and choices, through the service -------------------------------------------------------
async def test_turns_choices_and_options_through_the_service(tmp_path, store_url):
    async with make_service(
        tmp_path, reply="an answer", models={"tuned": "tuned answer"}, database_url=store_url
    ) as service:
        assert service.history.dialect == store_url.split(":")[0]
        events = service.reply("c1", "u1", "first question")
        accepted = await anext(events)
        assert isinstance(accepted, Accepted)
        assert await service.history.turn_state(accepted.turn_id) == "pending"  # stored when accepted
        assert [e async for e in events][-1].text == "an answer"
        assert await service.history.turn_state(accepted.turn_id) == "answered"
        await service.set_model("c1", "tuned")
        await service.set_model("c1", "tuned")  # an upsert, not a second row
        await service.set_scope_default("guild", "tuned")
        await service.set_temperature("c1", "0,3")
        assert await service.current_model("c1") == "tuned"
        assert await service.current_model("c2", "guild") == "tuned"
        assert await service.current_temperature("c1") == pytest.approx(0.3)
        _, done = await collect(service, "c1", text="second question")
        assert done.text == "tuned answer"
        assert service.engines["tuned"].requests[-1].temperature == pytest.approx(0.3)
        assert contents(service.engines["tuned"].requests[-1].messages[1:]) == [
            "first question", "an answer", "second question"
        ]  # fmt: skip
        await service.set_temperature("c1", "default")
        assert await service.current_temperature("c1") == service.settings.temperature
    async with make_service(tmp_path, models={"tuned": "x"}, database_url=store_url) as service:  # a restart
        assert await service.current_model("c1") == "tuned"
        assert contents(await service.history.recent("c1", 10)) == [
            "first question", "an answer", "second question", "tuned answer"
        ]  # fmt: skip
        assert await service.reset("c1") == 4
        assert await service.history.recent("c1", 10) == []


async def test_window_jumps_and_forget_counts(store_url):
    store = await ConversationStore.open(store_url)
    try:
        for turn in range(31):
            await store.add_turn("c", f"q{turn}", f"a{turn}")
        window = await store.recent("c", 4)  # steps of 2: the window starts at q28
        assert [m["content"] for m in window if m["role"] == "user"] == ["q28", "q29", "q30"]
        pending = await store.begin_turn("c", "unanswered")
        assert await store.finish_turn(pending, "failed")
        await store.finish_turn(pending, "answered", "late")
        assert await store.turn_state(pending) == "failed"  # a settled turn is left alone
        assert await store.forget("c") == 31 * 2 + 1
        assert await store.turn_state(pending) is None
    finally:
        await store.close()


async def test_bad_write_is_refused_and_the_next_one_works(store_url):
    store = await ConversationStore.open(store_url)
    try:
        with pytest.raises(StoreUnavailable):
            await store.begin_turn("c1", None)  # type: ignore[arg-type]  # NOT NULL, inside the transaction
        turn_id = await store.begin_turn("c1", "fine")
        assert await store.finish_turn(turn_id, "answered", "yes")
        assert contents(await store.recent("c1", 5)) == ["fine", "yes"]
    finally:
        await store.close()


async def test_leftovers_of_an_earlier_store_are_interrupted_and_returned_once(tmp_path, store_url):
    store = await ConversationStore.open(store_url)
    shown = await store.begin_turn("telegram:5", "tell me")
    await store.record_delivery(shown, "telegram", ["5:77"], "w ")
    await store.record_delivery(shown, "telegram", ["5:77", "5:78"], "w w ")  # the latest one counts
    never_shown = await store.begin_turn("telegram:6", "never shown")
    await store.close()
    async with make_service(tmp_path, database_url=store_url) as service:
        assert await service.history.turn_state(shown) == "interrupted"
        assert await service.history.turn_state(never_shown) == "interrupted"
        assert await service.take_interrupted("discord") == []
        assert await service.take_interrupted("telegram") == [
            InterruptedReply(shown, conversation_id="telegram:5", handles=["5:77", "5:78"], shown="w w ")
        ]
        assert await service.take_interrupted("telegram") == []  # returned once


async def test_two_stores_taking_interrupted_replies_at_once_get_each_once(store_url):
    store = await ConversationStore.open(store_url)
    ids = []
    for n in range(20):
        ids.append(await store.begin_turn(f"telegram:{n}", "q"))
        await store.record_delivery(ids[-1], "telegram", [f"{n}:1"], "half")
    await store.close()
    first, second = ConversationStore(store_url), ConversationStore(store_url)
    try:
        await first.recover()
        taken = await asyncio.gather(
            *(s.take_interrupted("telegram") for s in (first, second, first, second))
        )
        assert sorted(reply.turn_id for replies in taken for reply in replies) == ids
    finally:
        await first.close()
        await second.close()


async def test_old_turns_and_leases_are_pruned(store_url):
    store = await ConversationStore.open(store_url, keep_days=30)
    try:
        await store.add_turn("c1", "old", "old answer")
        await store.add_turn("c1", "new", "new answer")
        async with store.engine.begin() as db:
            await db.execute(
                sa.update(turns)
                .where(turns.c.question == "old")
                .values(created_at=turns.c.created_at - 31 * 86400)
            )
            await db.execute(sa.insert(processes).values(owner="gone:1:1:x", heartbeat_at=0.0))
        await store.recover()  # prunes at start
        assert contents(await store.recent("c1", 10)) == ["new", "new answer"]
        async with store.engine.connect() as db:
            owners = (await db.execute(sa.select(processes.c.owner))).scalars().all()
        assert owners == [process_owner()]  # this process's own lease stays
    finally:
        await store.close()


# -- schema ---------------------------------------------------------------------------------------
async def test_processes_starting_together_migrate_once(store_url):
    stores = [ConversationStore(store_url) for _ in range(4)]
    try:
        await asyncio.gather(*(store.ready() for store in stores))  # four engines: four connections
        async with stores[0].engine.connect() as db:
            versions = (await db.execute(sa.select(schema.schema_version.c.version))).scalars().all()
        assert versions == [schema.SCHEMA_VERSION]
        turn_id = await stores[1].begin_turn("c", "q")
        assert await stores[2].turn_state(turn_id) == "pending"
    finally:
        for store in stores:
            await store.close()


async def test_processes_starting_together_on_a_new_sqlite_file_all_open(tmp_path):
    """Connections switching a new file to WAL together are told 'locked' at once, without SQLite's
    busy wait (it failed about one start in fifteen); every store must still open."""
    for round_ in range(30):
        stores = [ConversationStore(tmp_path / f"history-{round_}.sqlite3") for _ in range(8)]
        try:
            await asyncio.gather(*(store.ready() for store in stores))
        finally:
            for store in stores:
                await store.close()


async def test_a_newer_schema_is_refused_untouched(store_url):
    store = await ConversationStore.open(store_url)
    async with store.engine.begin() as db:
        await db.execute(sa.update(schema.schema_version).values(version=schema.SCHEMA_VERSION + 1))
    await store.add_turn("c", "kept", "kept too")
    await store.close()
    newer = ConversationStore(store_url)
    try:
        with pytest.raises(ChatError, match=f"schema version {schema.SCHEMA_VERSION + 1}"):
            await newer.ready()
    finally:
        await newer.close()


SCHEMA_V2 = """
CREATE TABLE turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL CHECK (state IN ('pending', 'answered', 'interrupted', 'failed')),
    owner TEXT,
    platform TEXT,
    handles TEXT NOT NULL DEFAULT '[]',
    shown TEXT NOT NULL DEFAULT '',
    notice_due INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX turns_by_conversation ON turns (conversation_id, state, id);
CREATE INDEX turns_by_age ON turns (created_at);
CREATE INDEX turns_pending ON turns (id) WHERE state = 'pending';
CREATE INDEX turns_notice_due ON turns (platform) WHERE notice_due = 1;
CREATE TABLE model_choice (key TEXT PRIMARY KEY, model TEXT NOT NULL);
CREATE TABLE conversation_options (conversation_id TEXT PRIMARY KEY, temperature REAL);
PRAGMA user_version = 2;
"""


async def test_sqlite_file_of_schema_2_is_migrated_with_its_pending_turns(tmp_path):
    """A file the previous lorabot wrote (PRAGMA user_version 2, owners host:pid:start): its turns,
    choices and options are kept, and a pending turn of a process gone since is interrupted."""
    import socket
    import sqlite3

    path = tmp_path / "history.sqlite3"
    dead_owner = f"{socket.gethostname()}:{2**22 + 12345}:1"  # the old owner format; no such pid
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(SCHEMA_V2)
        db.execute(
            "INSERT INTO turns (conversation_id, question, answer, state, created_at, updated_at) "
            "VALUES ('c1', 'q1', 'a1', 'answered', 1e9, 1e9)"
        )
        db.execute(
            "INSERT INTO turns (conversation_id, question, state, owner, platform, handles, shown, "
            "created_at, updated_at) "
            "VALUES ('c1', 'q2', 'pending', ?, 'telegram', '[\"1:2\"]', 'half', 1e9, 1e9)",
            (dead_owner,),
        )
        db.execute("INSERT INTO model_choice VALUES ('c1', 'tuned')")
        db.execute("INSERT INTO conversation_options VALUES ('c1', 0.25)")
    store = await ConversationStore.open(path)
    try:
        assert await store.recover() == 1
        assert contents(await store.recent("c1", 10)) == ["q1", "a1"]
        assert await store.model_choice("c1") == "tuned" and await store.temperature("c1") == 0.25
        assert [r.shown for r in await store.take_interrupted("telegram")] == ["half"]
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (schema.SCHEMA_VERSION,)
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(schema.SCHEMA_VERSION,)]


# -- settings -------------------------------------------------------------------------------------
def test_database_url_setting(tmp_path):
    default = load_core_settings(data_dir=tmp_path)
    assert default.resolved_database_url == f"sqlite:///{tmp_path / 'history.sqlite3'}"
    postgres = load_core_settings(data_dir=tmp_path, database_url="postgres://bot:pw@db/lorabot")
    assert postgres.resolved_database_url == "postgres://bot:pw@db/lorabot"
    for bad in ("mysql://bot:s3cret-pw@db/lorabot", "not a url", "postgresql://bot:s3cret-pw@db"):
        with pytest.raises(SettingsError) as caught:
            load_core_settings(data_dir=tmp_path, database_url=bad)
        message = str(caught.value)
        assert "LORABOT_DATABASE_URL" in message and "postgresql://" in message, message
        assert "s3cret-pw" not in message  # a URL may hold a password: never echoed


# -- PostgreSQL faults ----------------------------------------------------------------------------
async def test_postgres_locked_table_gives_a_clear_error_and_keeps_the_reply(postgres_url):
    import asyncpg

    store = await ConversationStore.open(postgres_url, busy_timeout_s=0.3)
    other = await asyncpg.connect(postgres_url)
    try:
        turn_id = await store.begin_turn("c1", "first")
        locker = other.transaction()
        await locker.start()
        await other.execute("LOCK TABLE turns IN EXCLUSIVE MODE")  # writers wait, readers do not
        assert not await store.finish_turn(turn_id, "answered", "the reply")  # kept for later
        with pytest.raises(StoreUnavailable, match="couldn't save this conversation"):
            await store.begin_turn("c1", "lost")
        assert await store.turn_state(turn_id) == "pending"
        await locker.rollback()
        second = await store.begin_turn("c1", "second")  # the kept write goes in first
        assert await store.turn_state(turn_id) == "answered"
        assert await store.finish_turn(second, "answered", "ok")
        assert contents(await store.recent("c1", 10)) == ["first", "the reply", "second", "ok"]
    finally:
        await other.close()
        await store.close()


async def test_postgres_outage_keeps_the_reply_and_the_store_reconnects(postgres_server, postgres_url):
    """The server goes down while a reply is generated and comes back: the end of the reply is
    kept and stored with the first write after the outage; no write fails on a dead pooled
    connection once the server is back (they are checked before use)."""
    store = await ConversationStore.open(postgres_url)
    try:
        await store.set_model_choice("c1", "tuned")
        postgres_server.stop_server()  # a restart while the bot is idle: the pool's connections die
        postgres_server.start_server()
        assert await store.model_choice("c1") == "tuned"  # checked before use, replaced: no error
        turn_id = await store.begin_turn("c1", "during the outage")
        postgres_server.stop_server()
        try:
            assert not await store.finish_turn(turn_id, "answered", "kept")  # kept for later
            with pytest.raises(StoreUnavailable, match="couldn't save this conversation"):
                await store.begin_turn("c1", "refused")
        finally:
            postgres_server.start_server()
        after = await store.begin_turn("c1", "after")  # the kept write goes in first
        assert await store.turn_state(turn_id) == "answered"
        assert await store.finish_turn(after, "answered", "ok")
        assert contents(await store.recent("c1", 10)) == ["during the outage", "kept", "after", "ok"]
    finally:
        await store.close()


async def test_postgres_server_unreachable_at_start_is_a_clear_error():
    url = "postgresql://lorabot:pa55word@127.0.0.1:1/lorabot"  # nothing listens on port 1
    with pytest.raises(StoreUnavailable) as caught:
        await ConversationStore.open(url)
    message = caught.value.user_message
    assert "couldn't open the conversation history at postgresql://lorabot:***@127.0.0.1:1/lorabot" in message
    assert "pa55word" not in message


# -- processes that stop: by pid in this pid namespace, by lease elsewhere ------------------------
OTHER_BOT = """
import asyncio, sys
from core.history import ConversationStore

async def main():
    store = await ConversationStore.open(sys.argv[1], lease_s=float(sys.argv[2]))
    turn_id = await store.begin_turn("telegram:9", "a question answered elsewhere")
    await store.record_delivery(turn_id, "telegram", ["9:99"], "half a")
    print("turn", turn_id, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("namespace", ["same", "other"])
async def test_a_live_process_keeps_its_turns_and_a_stopped_ones_are_marked(store_url, namespace):
    """'same': the other process's pid is checked (immediately dead after SIGKILL, though its lease
    is still fresh). 'other': a process in another pid namespace, as on another host or in another
    container: alive while it renews its lease, gone once the lease runs out."""
    if namespace == "other" and not unshare_works():
        pytest.skip("needs root and unshare(1) for a second pid namespace")
    # 'same': a lease long enough that only the pid check can mark the turn before it runs out
    lease_s = 1.0 if namespace == "other" else 5.0
    prefix = ["unshare", "-p", "-f", "--mount-proc", "--kill-child=SIGKILL"] if namespace == "other" else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT.parent), str(ROOT)])}
    bot = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-c", OTHER_BOT, store_url, str(lease_s),
        cwd=ROOT.parent, env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    store = await ConversationStore.open(store_url, lease_s=lease_s)
    try:
        async with asyncio.timeout(60):
            line = (await bot.stdout.readline()).decode()
        assert line.startswith("turn"), line
        turn_id = int(line.split()[1])

        async def heartbeat() -> float:
            async with store.engine.connect() as db:
                owner = sa.select(turns.c.owner).where(turns.c.id == turn_id).scalar_subquery()
                return (
                    await db.execute(sa.select(processes.c.heartbeat_at).where(processes.c.owner == owner))
                ).scalar()

        first = await heartbeat()
        await until(lambda: _later(heartbeat(), first + 1.5))  # renewed (for 'other' past a whole lease)
        assert await store.recover() == 0  # alive: left alone
        assert await store.turn_state(turn_id) == "pending"
        assert await store.take_interrupted("telegram") == []
    finally:
        bot.send_signal(signal.SIGKILL)
        await bot.wait()
    try:
        if namespace == "same":  # the pid is gone: marked without waiting for the lease
            await store.recover()  # (or the store's periodic check got there first)
            assert await store.turn_state(turn_id) == "interrupted"
            assert time.time() < await heartbeat() + lease_s  # its last renewal still fresh
        else:  # the periodic check marks it once the lease has run out
            await until(lambda: _equals(store.turn_state(turn_id), "interrupted"))
        assert await store.turn_state(turn_id) == "interrupted"
        assert await store.take_interrupted("telegram") == [
            InterruptedReply(turn_id, "telegram:9", ["9:99"], "half a")
        ]
    finally:
        await store.close()


async def _later(value, than: float) -> bool:
    return (await value) > than


async def _equals(value, expected) -> bool:
    return (await value) == expected


# -- several bot processes on one PostgreSQL database ---------------------------------------------
async def test_two_bot_processes_see_each_others_model_choices(tmp_path, postgres_url, embedded_gguf):
    """Two `lorabot chat` processes, each with its own data folder, share one database: a model
    picked in one is the model the other uses, while both run."""

    def environment(name: str) -> dict[str, str]:
        data = tmp_path / name
        data.mkdir()
        (data / "models.toml").write_text(f'[models.tuned]\npath = "{embedded_gguf}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LORABOT_", "DISCORD_", "TELEGRAM_"))}
        return {
            **env,
            "PYTHONPATH": str(ROOT.parent),
            "LORABOT_DATA_DIR": str(data),
            "LORABOT_DATABASE_URL": postgres_url,
        }

    async def start(name: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lorabot", "chat", cwd=tmp_path, env=environment(name),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip

    async def ask(bot: asyncio.subprocess.Process, line: str, expect: str) -> str:
        bot.stdin.write(line.encode() + b"\n")
        await bot.stdin.drain()
        seen = ""
        async with asyncio.timeout(90):
            while expect not in seen:
                chunk = await bot.stdout.readline()
                assert chunk, f"the bot exited; it said: {seen}"
                seen += chunk.decode()
        return seen

    first, second = await start("first"), await start("second")
    try:
        assert "Model here: smollm2-135m" in await ask(first, "/model", "Model here:")
        assert "Model here is now tuned." in await ask(second, "/model tuned", "Model here is now")
        assert "Model here: tuned" in await ask(first, "/model", "Model here:")  # the other's choice
        await ask(first, "/model smollm2-135m", "Model here is now")
        assert "Model here: smollm2-135m" in await ask(second, "/model", "Model here:")
    finally:
        for bot in (first, second):
            if bot.returncode is None:
                bot.stdin.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        await bot.wait()
            if bot.returncode is None:
                bot.kill()
                await bot.wait()
    assert first.returncode == second.returncode == 0
