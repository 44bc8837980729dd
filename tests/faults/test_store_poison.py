"""One bad write must not poison the history store (issue 21, item 2): a reply with NUL or a lone
surrogate is stored cleaned and answered; a deferred write that can never be stored is dropped
(and logged by its turn id, not its text) instead of failing every later write; and the lease is
renewed on its own, so other hosts never take this live process for a dead one. Each test runs
against SQLite and a real PostgreSQL server (`store_url`, tests/conftest.py) unless it says why not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core import database
from core.events import Delta, Done
from core.history import ConversationStore
from core.limits import ModelTextCleaner, clean_model_text
from core.schema import processes
from core.turns import process_owner
from support.engines import make_service
from support.namespaces import unshare_works
from support.waiting import until

ROOT = Path(__file__).resolve().parents[2]
# a NUL, a lone surrogate, and a pair written as two code points
NUL_REPLY = "before\x00after \ud83d lone \ud83d\ude00 pair"
CLEAN_REPLY = "beforeafter \ufffd lone \U0001f600 pair"


def contents(messages):
    return [m["content"] for m in messages]


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


@contextlib.asynccontextmanager
async def turns_locked(store_url: str) -> AsyncIterator[None]:
    """Another connection holds the lock every write of `turns` needs (SQLite: the database's write
    lock; PostgreSQL: LOCK TABLE), so the store refuses writes for a passing reason meanwhile."""
    if store_url.startswith("sqlite"):
        other = sqlite3.connect(make_url(store_url).database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
        return
    import asyncpg

    other = await asyncpg.connect(store_url)
    try:
        async with other.transaction():
            await other.execute("LOCK TABLE turns IN EXCLUSIVE MODE")
            yield
    finally:
        await other.close()


async def lease_renewed_at(store: ConversationStore) -> float:
    """This process's heartbeat, on the database's clock (what other hosts compare)."""
    async with store.engine.connect() as db:
        query = sa.select(processes.c.heartbeat_at).where(processes.c.owner == process_owner())
        return float((await db.execute(query)).scalar_one())


async def database_now(store: ConversationStore) -> float:
    async with store.engine.connect() as db:
        return float((await db.execute(sa.select(database.db_clock(store.dialect)))).scalar_one())


# -- cleaning ---------------------------------------------------------------------------------------
def test_model_text_is_cleaned_and_pairs_split_across_pieces_are_joined():
    assert clean_model_text("a\x00b\x1b[0m\tc\n") == "ab[0m\tc\n"  # tab and line breaks stay
    assert clean_model_text("\ud83d\ude00 \udc00") == "\U0001f600 \ufffd"
    cleaner = ModelTextCleaner()
    pieces = [cleaner.feed(piece) for piece in ("x\ud83d", "\ude00y", "\x00", "z\ud83d")] + [cleaner.finish()]
    assert pieces == ["x", "\U0001f600y", "", "z", "\ufffd"]


async def test_nul_and_lone_surrogates_in_a_reply_are_sent_and_stored_clean(tmp_path, store_url):
    """Before: PostgreSQL refused the reply (SQLSTATE 22021) and the turn stayed pending (after a
    restart the delivered reply was marked interrupted); SQLite raised UnicodeEncodeError after the
    user had seen the text."""
    async with make_service(tmp_path, reply=NUL_REPLY, database_url=store_url) as service:
        events = [event async for event in service.reply("c1", "u1", "say something odd")]
        deltas = [event.text for event in events if isinstance(event, Delta)]
        done = next(event for event in events if isinstance(event, Done))
        assert all(encodable(text) for text in deltas), deltas  # nothing a platform or driver refuses
        assert done.text == "".join(deltas) == CLEAN_REPLY
        turn_id = events[0].turn_id
        assert await service.history.turn_state(turn_id) == "answered"
        assert contents(await service.history.recent("c1", 10)) == ["say something odd", CLEAN_REPLY]


async def test_the_store_cleans_every_text_it_writes(store_url):
    """Whatever a caller passes (a platform's text, an engine not cleaned by the service), no text
    column write fails on NUL or a lone surrogate, and reads by the same key find the row."""
    store = await ConversationStore.open(store_url)
    try:
        turn_id = await store.begin_turn("c\x00 1", "q\x00\udfff")
        assert await store.record_delivery(turn_id, "tele\x00gram", ["1:\x00"], "sh\x00own \ud800")
        assert await store.finish_turn(turn_id, "answered", "a\x00b\ud800", question="q\x00 read")
        assert await store.turn_state(turn_id) == "answered"
        assert contents(await store.recent("c\x00 1", 10)) == ["q read", "ab\ufffd"]
        assert contents(await store.recent("c 1", 10)) == ["q read", "ab\ufffd"]  # stored cleaned
        await store.add_turn("c2", "\ud83d\ude00?", "\x00")
        assert contents(await store.recent("c2", 10)) == ["\U0001f600?", ""]
        await store.set_model_choice("k\x00", "m\udc00")
        assert await store.model_choice("k\x00") == "m\ufffd"
        assert await store.forget("c\x00 1") == 2
    finally:
        await store.close()


# -- deferred writes ------------------------------------------------------------------------------
async def test_a_deferred_write_that_can_never_be_stored_is_dropped_and_the_store_goes_on(store_url, caplog):
    """Two ends of replies are deferred while the store refuses writes: one with a NUL (stored
    cleaned), one that breaks a constraint (a state the schema refuses). Before: once the store was
    back every write replayed the bad one and failed (every user's question and the lease renewal
    got StoreUnavailable until a restart)."""
    store = await ConversationStore.open(store_url, busy_timeout_s=0.3, lease_s=1.0)
    try:
        doomed = await store.begin_turn("c1", "first question")
        nul = await store.begin_turn("c2", "second question")
        async with turns_locked(store_url):
            bad_state: Any = "no-such-state"  # the schema's CHECK refuses it: this write can never succeed
            assert not await store.finish_turn(doomed, bad_state, "secret doomed reply")
            assert not await store.finish_turn(nul, "answered", "kept\x00 reply")
        back_at = await database_now(store)
        with caplog.at_level(logging.INFO, logger="core.history"):
            after = await store.begin_turn("c3", "after the outage")  # before: StoreUnavailable, forever
            assert await store.finish_turn(after, "answered", "fine")
            assert await store.begin_turn("c3", "and again")
            await until(lambda: _later(lease_renewed_at(store), back_at))  # the lease is renewed too
        assert await store.turn_state(nul) == "answered"
        assert contents(await store.recent("c2", 10)) == ["second question", "kept reply"]
        assert await store.turn_state(doomed) == "pending"  # dropped; a restart marks it interrupted
        assert contents(await store.recent("c3", 10)) == ["after the outage", "fine"]
        dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert len(dropped) == 1 and f"turn {doomed}" in dropped[0], dropped  # logged once, by turn id
        assert "IntegrityError" in dropped[0] or "CheckViolationError (SQLSTATE 23514)" in dropped[0], dropped
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert "secret doomed reply" not in logged and "kept" not in logged  # never the text
    finally:
        await store.close()


async def _later(value, than: float) -> bool:
    return (await value) > than


OTHER_HOST = """
import asyncio, sys
from core.history import ConversationStore

async def main():
    store = await ConversationStore.open(sys.argv[1], lease_s=float(sys.argv[2]), busy_timeout_s=0.3)
    print("marked", await store.recover(), flush=True)
    await store.close()

asyncio.run(main())
"""


async def test_a_deferred_write_that_keeps_failing_never_stops_the_lease(postgres_url):
    """A deferred end of a reply waits behind a row lock that another session holds (a passing
    reason, so it is kept) for longer than a whole lease. The heartbeat has its own transaction:
    the lease stays fresh, and another host (another pid namespace, which can only look at the
    lease) leaves this process's pending turns alone. Before: the heartbeat replayed the deferred
    write first and failed with it, and the other host marked the live turns interrupted.
    PostgreSQL only: SQLite has no row locks (its write lock stops every write, the heartbeat too)."""
    import asyncpg

    if not unshare_works():
        pytest.skip("needs root and unshare(1) for a second pid namespace")
    lease_s = 1.0
    store = await ConversationStore.open(postgres_url, busy_timeout_s=0.3, lease_s=lease_s)
    other = await asyncpg.connect(postgres_url)
    try:
        stuck = await store.begin_turn("c1", "a question")
        live = await store.begin_turn("c2", "another one, still being answered")
        async with other.transaction():
            await other.execute("SELECT 1 FROM turns WHERE id = $1 FOR UPDATE", stuck)
            assert not await store.finish_turn(stuck, "answered", "the reply")  # lock timeout: kept
            locked_at = await database_now(store)
            # renewed past two whole leases while the kept write kept failing behind the row lock
            await until(lambda: _later(lease_renewed_at(store), locked_at + 2 * lease_s))
            assert await store.turn_state(stuck) == "pending"  # still kept, not dropped
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
            host = await asyncio.create_subprocess_exec(
                "unshare", "-p", "-f", "--mount-proc", "--kill-child=SIGKILL",
                sys.executable, "-c", OTHER_HOST, postgres_url, str(lease_s),
                cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            async with asyncio.timeout(60):
                said = (await host.communicate())[0].decode()
            assert host.returncode == 0 and said.split() == ["marked", "0"], said
            assert await store.turn_state(live) == "pending"
        await store.begin_turn("c3", "after the lock")  # the kept write goes in first
        assert await store.turn_state(stuck) == "answered"
        assert contents(await store.recent("c1", 10)) == ["a question", "the reply"]
    finally:
        await other.close()
        await store.close()
