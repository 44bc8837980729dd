"""History store and models file faults: a locked or full database, a killed process, an old
database file, a models file broken while the bot runs. Each test names the outcome it asserts;
docs/reliability.md ("History store") lists them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core import history
from core.errors import StoreUnavailable
from core.events import Accepted, Delta, Done
from core.history import ConversationStore
from core.service import InterruptedReply
from lorabot.cli import app
from support.engines import make_service
from support.waiting import until

ROOT = Path(__file__).resolve().parents[2]


async def collect(service, conversation="c1", user="u1", text="hi"):
    events = [event async for event in service.reply(conversation, user, text)]
    return events, next(e for e in events if isinstance(e, Done))


def contents(messages):
    return [m["content"] for m in messages]


@contextlib.contextmanager
def write_locked(path: Path):
    """Another connection holds the database's write lock (as another process would)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest.fixture
def short_busy_timeout(monkeypatch):
    monkeypatch.setattr(history, "BUSY_TIMEOUT_S", 0.2)


async def sqlite_pragma(store: ConversationStore, pragma: str) -> int:
    """Run a PRAGMA on the store's own connection (a SQLite store has one; limits such as
    max_page_count are per connection)."""
    async with store.engine.connect() as db:
        return (await db.exec_driver_sql(f"PRAGMA {pragma}")).scalar()


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "history.sqlite3"


# -- locked ---------------------------------------------------------------------------------------
async def test_locked_longer_than_busy_timeout_gives_clear_error_then_serves(tmp_path, short_busy_timeout):
    async with make_service(tmp_path, reply="stored answer") as service:
        with write_locked(db_path(tmp_path)):
            with pytest.raises(StoreUnavailable) as caught:
                await collect(service, text="lost question")
            assert "couldn't save this conversation" in caught.value.user_message
            assert service.scheduler.running == service.scheduler.waiting == 0  # its queue place is freed
        _, done = await collect(service, text="next question")
        assert done.text == "stored answer"
        assert contents(await service.history.recent("c1", 10)) == ["next question", "stored answer"]


async def sqlite_statements(store: ConversationStore) -> list[str]:
    """The statements the store's SQLite connection starts from now on (sqlite3's trace callback
    fires as a statement begins to run, before it asks for a lock)."""
    started: list[str] = []
    async with store.engine.connect() as db:
        driver = (await db.get_raw_connection()).driver_connection  # the aiosqlite connection
        await driver.set_trace_callback(started.append)
    return started


async def test_lock_shorter_than_busy_timeout_is_waited_out(tmp_path):
    """The question's write is seen running its BEGIN IMMEDIATE while another connection holds the
    lock and not failing (SQLite's busy wait: BUSY_TIMEOUT_S is 5 s); it goes in once the lock is
    released."""
    async with make_service(tmp_path, reply="patient") as service:
        await service.history.ready()
        statements = await sqlite_statements(service.history)
        with write_locked(db_path(tmp_path)):
            task = asyncio.create_task(collect(service, text="q"))
            await until(lambda: "BEGIN IMMEDIATE" in statements or task.done())
            assert not task.done()  # blocked on the lock: it cannot have stored anything, nor failed
        _, done = await task
        assert done.text == "patient"
        assert contents(await service.history.recent("c1", 10)) == ["q", "patient"]


async def test_locked_while_answering_reply_is_shown_and_stored_once_unlocked(tmp_path, short_busy_timeout):
    async with make_service(tmp_path, reply="a b c d", token_delay_s=0.02) as service:
        with contextlib.ExitStack() as lock:
            async with contextlib.aclosing(service.reply("c1", "u1", "first")) as events:
                async for event in events:
                    if isinstance(event, Accepted):
                        turn_id = event.turn_id
                        lock.enter_context(write_locked(db_path(tmp_path)))
                    elif isinstance(event, Delta):
                        await service.record_delivery(turn_id, "telegram", ["1:2"], event.text)
                    elif isinstance(event, Done):
                        done = event
            assert done.text == "a b c d"  # the user got the whole reply
            assert await service.history.turn_state(turn_id) == "pending"  # its record waits
        await collect(service, text="second")  # the lock is gone: the kept write goes in first
        assert await service.history.turn_state(turn_id) == "answered"
        assert contents(await service.history.recent("c1", 10)) == ["first", "a b c d", "second", "a b c d"]


async def test_model_choice_and_reset_while_locked_say_so_and_work_afterwards(tmp_path, short_busy_timeout):
    async with make_service(tmp_path, reply="base", models={"tuned": "tuned"}) as service:
        await collect(service, "c1")
        with write_locked(db_path(tmp_path)):
            with pytest.raises(StoreUnavailable, match="couldn't save the model choice"):
                await service.set_model("c1", "tuned")
            with pytest.raises(StoreUnavailable, match="couldn't forget this conversation"):
                await service.reset("c1")
        assert await service.current_model("c1") == "smollm2-135m"  # not saved, and the user was told
        assert len(await service.history.recent("c1", 10)) == 2  # not forgotten, and the user was told
        await service.set_model("c1", "tuned")
        assert await service.reset("c1") == 2
    async with make_service(tmp_path, reply="base", models={"tuned": "tuned"}) as service:
        assert await service.current_model("c1") == "tuned"  # survived the restart
        assert await service.history.recent("c1", 10) == []


# -- disk full -------------------------------------------------------------------------------------
async def test_disk_full_gives_clear_error_and_the_next_write_works(tmp_path):
    async with make_service(tmp_path, reply="ok") as service:
        await collect(service, text="x " * 1900)  # fills a page
        pages = await sqlite_pragma(service.history, "page_count")
        await sqlite_pragma(
            service.history, f"max_page_count = {pages}"
        )  # may not grow: "database or disk is full"
        with pytest.raises(StoreUnavailable):
            await collect(service, text="y " * 1900)
        with pytest.raises(StoreUnavailable):
            await collect(service, text="z " * 1900)  # still full: still a clear error, not a crash
        await sqlite_pragma(service.history, "max_page_count = 1073741823")  # space freed
        _, done = await collect(service, text="after")
        assert done.text == "ok"
        assert contents(await service.history.recent("c1", 10))[-2:] == ["after", "ok"]


async def test_write_failing_inside_its_transaction_is_rolled_back(tmp_path):
    """A statement that fails after BEGIN (as a busy COMMIT in rollback-journal mode does) must
    not leave the transaction open: the old store then failed every later write."""
    store = ConversationStore(tmp_path / "history.sqlite3")
    with pytest.raises(StoreUnavailable):
        await store.begin_turn("c1", None)  # type: ignore[arg-type]  # NOT NULL fails inside BEGIN
    turn_id = await store.begin_turn("c1", "fine")
    assert await store.finish_turn(turn_id, "answered", "yes")
    assert contents(await store.recent("c1", 5)) == ["fine", "yes"]
    await store.close()


# -- killed process --------------------------------------------------------------------------------
KILLED_BOT = """
import asyncio, sys
from pathlib import Path
from core.events import Accepted, Delta
from support.engines import make_service

async def main():
    words = " ".join(f"w{i}" for i in range(5000))
    service = make_service(Path(sys.argv[1]), reply=words, token_delay_s=0.01)
    await service.start()
    shown = ""
    async for event in service.reply("telegram:42", "telegram:7", "tell me a long story"):
        if isinstance(event, Accepted):
            turn_id = event.turn_id
        elif isinstance(event, Delta):
            shown += event.text
            if len(shown.split()) == 5:
                await service.record_delivery(turn_id, "telegram", ["42:1001"], shown)
                print("shown", turn_id, flush=True)

asyncio.run(main())
"""


async def test_killed_process_leaves_an_interrupted_turn_returned_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    bot = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_BOT, str(tmp_path), cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(120):
            line = (await bot.stdout.readline()).decode()
        assert line.startswith("shown"), line
        turn_id = int(line.split()[1])
        # a second process starting on the same data meanwhile leaves the live reply alone
        async with make_service(tmp_path) as other:
            assert await other.history.turn_state(turn_id) == "pending"
            assert await other.take_interrupted("telegram") == []
    finally:
        bot.send_signal(signal.SIGKILL)
        await bot.wait()
    assert bot.returncode == -signal.SIGKILL
    async with make_service(tmp_path, reply="I'm back") as service:
        assert await service.history.turn_state(turn_id) == "interrupted"
        assert await service.take_interrupted("telegram") == [
            InterruptedReply(turn_id, "telegram:42", ["42:1001"], "w0 w1 w2 w3 w4 ")
        ]
        assert await service.take_interrupted("telegram") == []
        assert await service.history.recent("telegram:42", 10) == []
        _, done = await collect(service, "telegram:42", "telegram:7", "still there?")
        assert done.text == "I'm back"
        sent = service.engines["smollm2-135m"].requests[-1].messages
        assert contents(sent[1:]) == ["still there?"]  # the interrupted question is not in the context


# -- migration -------------------------------------------------------------------------------------
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, id);
CREATE TABLE IF NOT EXISTS model_choice (
    key TEXT PRIMARY KEY,          -- a conversation id, or 'scope:' + a scope id (server, group)
    model TEXT NOT NULL
);
"""


async def test_database_of_the_old_schema_is_migrated(tmp_path):
    path = db_path(tmp_path)
    path.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(OLD_SCHEMA)
        rows = [("c1", "user", "q1"), ("c2", "user", "other"), ("c1", "assistant", "a1")]
        rows += [("c2", "assistant", "other answer"), ("c1", "user", "q2"), ("c1", "assistant", "a2")]
        db.executemany(
            "INSERT INTO messages (conversation_id, role, content, created_at) VALUES (?, ?, ?, 1e9)", rows
        )
        db.execute("INSERT INTO model_choice VALUES ('c1', 'tuned'), ('scope:g', 'smollm2-135m')")
    async with make_service(tmp_path, reply="new", models={"tuned": "new"}, history_keep_days=0) as service:
        assert contents(await service.history.recent("c1", 10)) == ["q1", "a1", "q2", "a2"]
        assert contents(await service.history.recent("c2", 10)) == ["other", "other answer"]
        assert await service.current_model("c1") == "tuned"
        await collect(service, "c1", text="q3")
        sent = service.engines["tuned"].requests[-1].messages
        assert contents(sent[1:]) == ["q1", "a1", "q2", "a2", "q3"]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (history.SCHEMA_VERSION,)
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchall()


# -- models file -----------------------------------------------------------------------------------
async def test_models_file_corrupted_while_running(tmp_path, caplog):
    async with make_service(tmp_path, reply="base", models={"tuned": "tuned"}) as service:
        await service.set_model("c1", "tuned")
        assert (await collect(service, "c1"))[1].text == "tuned"
        models_file = service.registry.path
        good = models_file.read_text()
        models_file.write_text(good + "\nthis line is broken\n")
        with caplog.at_level(logging.WARNING, logger="core.registry"):
            assert (await collect(service, "c1"))[1].text == "tuned"  # the last good registry
            assert (await collect(service, "c2"))[1].text == "base"
            problem = service.stats().registry_problem
        line = good.count("\n") + 2
        assert problem and f"line {line}" in problem, problem
        warnings = [r.getMessage() for r in caplog.records if r.name == "core.registry"]
        assert len(warnings) == 1 and f"line {line}" in warnings[0]  # once per change, not per lookup
        models_file.write_text(good)  # fixed
        assert service.stats().registry_problem is None
        assert (await collect(service, "c1"))[1].text == "tuned"


async def test_bad_entry_names_its_line_and_a_fresh_start_keeps_the_embedded_model(tmp_path):
    async with make_service(tmp_path, reply="base", models={"tuned": "tuned"}) as service:
        models_file = service.registry.path
        models_file.write_text(models_file.read_text() + '\n[models.bad]\npath = "x.gguf"\ntop_p = 7\n')
        assert service.model_names() == ["smollm2-135m", "tuned"]
        problem = service.stats().registry_problem
        assert "[models.bad] (line" in problem and "top_p" in problem, problem
    async with make_service(tmp_path, reply="base") as service:  # no last good registry: embedded only
        assert service.model_names() == ["smollm2-135m"]
        assert (await collect(service, "c1"))[1].text == "base"
        assert service.stats().registry_problem


def test_lorabot_models_prints_the_problem(tmp_path, monkeypatch, embedded_gguf):
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("LORABOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "250")
    (tmp_path / "models.toml").write_text(f'[models.mine]\npath = "{embedded_gguf}"\n\n[models.oops\n')
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 1, result.output
    assert "smollm2-135m" in result.output  # the embedded model is still listed
    assert "Error in the models file" in result.output and "line 4" in result.output, result.output
