"""Conversation history and per-conversation choices, in SQLite so they survive restarts.

A question is stored as a pending turn when it is accepted, so a killed process loses nothing:
the next start marks it interrupted and the adapter can mark its half-shown reply. Every write is
one transaction, rolled back on error, and a store error becomes `StoreUnavailable` (a polite
`ChatError`) instead of breaking every later write. SQLite calls are short; they run in a thread
(`asyncio.to_thread`) behind one lock so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from core.engines.base import Message
from core.errors import ChatError, StoreUnavailable
from core.turns import InterruptedReply, TurnState, owner_alive, process_owner

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT_S = 5.0  # how long a write waits for another connection's lock before giving up
PRUNE_EVERY_S = 3600.0
MAX_DEFERRED = 1000  # settle/delivery writes kept for a retry while the store refuses writes

# Version 0 is a new file or the first layout (a `messages` table, before versions were stored).
SCHEMA_VERSION = 2
_SCHEMA_V1 = [
    """CREATE TABLE IF NOT EXISTS turns (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id TEXT NOT NULL,
        question TEXT NOT NULL,
        answer TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL CHECK (state IN ('pending', 'answered', 'interrupted', 'failed')),
        owner TEXT,                              -- process writing it (core.turns.process_owner)
        platform TEXT,                           -- where the reply is shown, set by record_delivery
        handles TEXT NOT NULL DEFAULT '[]',      -- JSON list of the adapter's message handles
        shown TEXT NOT NULL DEFAULT '',          -- the reply text shown so far
        notice_due INTEGER NOT NULL DEFAULT 0,   -- left by a dead process; take_interrupted clears it
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (conversation_id, state, id)",
    "CREATE INDEX IF NOT EXISTS turns_by_age ON turns (created_at)",
    "CREATE INDEX IF NOT EXISTS turns_pending ON turns (id) WHERE state = 'pending'",
    "CREATE INDEX IF NOT EXISTS turns_notice_due ON turns (platform) WHERE notice_due = 1",
    """CREATE TABLE IF NOT EXISTS model_choice (
        key TEXT PRIMARY KEY,          -- a conversation id, or 'scope:' + a scope id (server, group)
        model TEXT NOT NULL
    )""",
]


def _migrate_to_v1(db: sqlite3.Connection) -> None:
    """Create the turns table; the first layout's messages become answered turns (a user message
    paired with the assistant message right after it in its conversation)."""
    for statement in _SCHEMA_V1:
        db.execute(statement)
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'").fetchone():
        kept = db.execute(
            """INSERT INTO turns (conversation_id, question, answer, state, created_at, updated_at)
            SELECT q.conversation_id, q.content, a.content, 'answered', q.created_at, a.created_at
            FROM messages AS q JOIN messages AS a ON a.id = (
                SELECT min(n.id) FROM messages AS n WHERE n.conversation_id = q.conversation_id AND n.id > q.id
            )
            WHERE q.role = 'user' AND a.role = 'assistant'
            ORDER BY q.id"""
        ).rowcount
        db.execute("DROP TABLE messages")
        log.info("history store: %d stored exchange(s) moved to the turns table", kept)


def _migrate_to_v2(db: sqlite3.Connection) -> None:
    """Per-conversation options (the sampling temperature chosen with /temperature)."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS conversation_options (
            conversation_id TEXT PRIMARY KEY,
            temperature REAL                 -- NULL: the model's or the global default
        )"""
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_to_v1, _migrate_to_v2]  # [v] makes v + 1


class ConversationStore:
    """Per-conversation turns (questions, replies, their state) and choices (the model), in SQLite."""

    def __init__(self, path: Path, *, keep_days: float = 0, busy_timeout_s: float | None = None) -> None:
        """Open (and if needed create or migrate) the store. `keep_days` > 0 prunes older turns."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        timeout = BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout)
        self._lock = threading.Lock()
        self._closed = False
        self.keep_days = keep_days
        self._pruned_at = float("-inf")
        # settle/delivery writes that failed, applied before the next write: key -> (sql, params)
        self._deferred: dict[tuple[str, int], tuple[str, tuple]] = {}
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except BaseException as error:
            self._db.close()
            if isinstance(error, sqlite3.Error):
                raise StoreUnavailable("open the conversation history") from error
            raise

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION in one transaction (another process may be doing the same)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (version,) = self._db.execute("PRAGMA user_version").fetchone()
                if version > SCHEMA_VERSION:
                    raise ChatError(
                        f"The history database has schema version {version}; this lorabot knows up to "
                        f"{SCHEMA_VERSION}. Upgrade lorabot or use another LORABOT_DATA_DIR."
                    )
                for step in MIGRATIONS[version:]:
                    step(self._db)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        if 0 < version < SCHEMA_VERSION:
            log.info("history store migrated from schema %d to %d", version, SCHEMA_VERSION)

    # -- plumbing ---------------------------------------------------------------------------
    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _read(self, work: Callable[[sqlite3.Connection], T], action: str) -> T:
        with self._lock:
            try:
                return work(self._db)
            except sqlite3.Error as error:
                log.warning("history store: cannot %s: %s", action, error)
                raise StoreUnavailable(action) from error

    def _write(self, work: Callable[[sqlite3.Connection], T], action: str) -> T:
        """Run `work` (and any deferred writes) in one transaction: all of it is stored, or none."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, params in self._deferred.values():
                    self._db.execute(sql, params)
                result = work(self._db)
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                self._rollback()
                log.warning("history store: cannot %s: %s", action, error)
                raise StoreUnavailable(action) from error
            except BaseException:
                self._rollback()
                raise
            if self._deferred:
                log.info("history store: %d deferred write(s) stored", len(self._deferred))
                self._deferred.clear()
            return result

    def _write_or_defer(self, key: tuple[str, int], sql: str, params: tuple, action: str) -> bool:
        """For writes whose caller cannot wait or fail (the end of a reply, a delivery record):
        on error keep the write and apply it with the next one that succeeds."""
        try:
            self._write(lambda db: db.execute(sql, params), action)
            return True
        except StoreUnavailable as error:
            if not isinstance(error.__cause__, sqlite3.OperationalError):
                return False  # not a passing condition (locked, full): retrying would fail every write
            with self._lock:
                self._deferred.pop(key, None)  # the newest version of this write goes last
                self._deferred[key] = (sql, params)
                while len(self._deferred) > MAX_DEFERRED:
                    dropped = next(iter(self._deferred))
                    log.warning("history store: dropping deferred write %s", dropped)
                    del self._deferred[dropped]
            return False

    async def _async(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.to_thread(call, *args)

    # -- turns ------------------------------------------------------------------------------
    async def begin_turn(self, conversation_id: str, question: str) -> int:
        """Store an accepted question as a pending turn; returns its id."""
        now = time.time()

        def work(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "INSERT INTO turns (conversation_id, question, state, owner, created_at, updated_at) "
                "VALUES (?, ?, 'pending', ?, ?, ?)",
                (conversation_id, question, process_owner(), now, now),
            )
            if self.keep_days and now - self._pruned_at >= PRUNE_EVERY_S:
                self._prune(db, now)
            return int(cursor.lastrowid or 0)

        return await self._async(self._write, work, "save this conversation")

    async def finish_turn(
        self, turn_id: int, state: TurnState, answer: str = "", *, question: str | None = None
    ) -> bool:
        """Settle a pending turn (`question` replaces the stored one, e.g. by the part the model
        read). Never raises for a store error: the write is kept and retried with the next one,
        and False says so. A turn already settled or forgotten is left alone."""
        sql = (
            "UPDATE turns SET state = ?, answer = ?, question = coalesce(?, question), updated_at = ? "
            "WHERE id = ? AND state = 'pending'"
        )
        params = (state, answer, question, time.time(), turn_id)
        return await self._async(self._write_or_defer, ("finish", turn_id), sql, params, "save a reply")

    async def add_turn(self, conversation_id: str, user_text: str, reply_text: str) -> None:
        """Store a finished exchange in one write (imports, tests)."""
        now = time.time()
        await self._async(
            self._write,
            lambda db: db.execute(
                "INSERT INTO turns (conversation_id, question, answer, state, created_at, updated_at) "
                "VALUES (?, ?, ?, 'answered', ?, ?)",
                (conversation_id, user_text, reply_text, now, now),
            ),
            "save this conversation",
        )

    async def record_delivery(self, turn_id: int, platform: str, handles: list[str], shown: str) -> bool:
        """Remember where a turn's reply is shown and what it shows; deferred like `finish_turn`."""
        sql = "UPDATE turns SET platform = ?, handles = ?, shown = ? WHERE id = ?"
        params = (platform, json.dumps(list(handles)), shown, turn_id)
        return await self._async(
            self._write_or_defer, ("delivery", turn_id), sql, params, "record a delivery"
        )

    async def turn_state(self, turn_id: int) -> TurnState | None:
        """A turn's state (None once forgotten or pruned)."""
        rows = await self._async(
            self._read,
            lambda db: db.execute("SELECT state FROM turns WHERE id = ?", (turn_id,)).fetchall(),
            "read a turn",
        )
        return rows[0][0] if rows else None

    async def recover(self) -> int:
        """Mark the pending turns of processes that no longer run as interrupted (those shown on a
        platform become due for `take_interrupted`), and prune; returns how many were marked."""

        def work(db: sqlite3.Connection) -> int:
            now = time.time()
            rows = db.execute("SELECT id, owner FROM turns WHERE state = 'pending'").fetchall()
            dead = [(now, turn_id) for turn_id, owner in rows if not owner_alive(owner)]
            db.executemany(
                "UPDATE turns SET state = 'interrupted', updated_at = ?, "
                "notice_due = (platform IS NOT NULL AND handles != '[]') WHERE id = ?",
                dead,
            )
            if self.keep_days:
                self._prune(db, now)
            return len(dead)

        marked = await self._async(self._write, work, "open the conversation history")
        if marked:
            log.warning("history store: %d reply(s) of a stopped process marked interrupted", marked)
        return marked

    async def take_interrupted(self, platform: str) -> list[InterruptedReply]:
        """The turns due for an 'interrupted' mark on `platform`, each returned once."""

        def work(db: sqlite3.Connection) -> list[InterruptedReply]:
            rows = db.execute(
                "UPDATE turns SET notice_due = 0 WHERE notice_due = 1 AND platform = ? "
                "RETURNING id, conversation_id, handles, shown",
                (platform,),
            ).fetchall()
            return [
                InterruptedReply(turn_id, conversation, json.loads(handles), shown)
                for turn_id, conversation, handles, shown in sorted(rows)
            ]

        return await self._async(self._write, work, "read the interrupted replies")

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        cutoff = now - self.keep_days * 86400
        removed = db.execute(
            "DELETE FROM turns WHERE created_at < ? AND state != 'pending'", (cutoff,)
        ).rowcount
        self._pruned_at = now
        if removed:
            log.info("history store: pruned %d turn(s) older than %g days", removed, self.keep_days)

    async def prune(self) -> None:
        """Delete turns older than `keep_days` (no-op when it is 0)."""
        if self.keep_days:
            await self._async(self._write, lambda db: self._prune(db, time.time()), "prune the history")

    async def recent(self, conversation_id: str, max_turns: int) -> list[Message]:
        """At most `max_turns` of the newest answered exchanges, oldest first.

        The window's start moves in jumps of half the window rather than one turn at a time:
        the history prefix then stays identical for several turns, so the engine's KV cache for
        this conversation stays valid (a sliding window would force a full re-read every turn).
        """

        def work(db: sqlite3.Connection) -> list[tuple[str, str]]:
            (turns,) = db.execute(
                "SELECT count(*) FROM turns WHERE conversation_id = ? AND state = 'answered'",
                (conversation_id,),
            ).fetchone()
            keep = turns
            if turns > max_turns:
                step = max(1, max_turns // 2)
                start = -(-(turns - max_turns) // step) * step  # ceil to a multiple of step
                keep = turns - start
            return db.execute(
                "SELECT question, answer FROM turns WHERE conversation_id = ? AND state = 'answered' "
                "ORDER BY id DESC LIMIT ?",
                (conversation_id, keep),
            ).fetchall()

        rows = await self._async(self._read, work, "read this conversation")
        messages: list[Message] = []
        for question, answer in reversed(rows):
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return messages

    async def forget(self, conversation_id: str) -> int:
        """Delete the conversation's turns, pending ones included; returns the messages removed."""
        rows = await self._async(
            self._write,
            lambda db: db.execute(
                "DELETE FROM turns WHERE conversation_id = ? RETURNING state", (conversation_id,)
            ).fetchall(),
            "forget this conversation",
        )
        return sum(2 if state == "answered" else 1 for (state,) in rows)

    # -- choices ----------------------------------------------------------------------------
    async def model_choice(self, key: str) -> str | None:
        rows = await self._async(
            self._read,
            lambda db: db.execute("SELECT model FROM model_choice WHERE key = ?", (key,)).fetchall(),
            "read the model choice",
        )
        return rows[0][0] if rows else None

    async def set_model_choice(self, key: str, model: str) -> None:
        await self._async(
            self._write,
            lambda db: db.execute(
                "INSERT INTO model_choice (key, model) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET model = excluded.model",
                (key, model),
            ),
            "save the model choice",
        )

    async def temperature(self, conversation_id: str) -> float | None:
        rows = await self._async(
            self._read,
            lambda db: db.execute(
                "SELECT temperature FROM conversation_options WHERE conversation_id = ?", (conversation_id,)
            ).fetchall(),
            "read the temperature",
        )
        return rows[0][0] if rows else None

    async def set_temperature(self, conversation_id: str, value: float | None) -> None:
        await self._async(
            self._write,
            lambda db: db.execute(
                "INSERT INTO conversation_options (conversation_id, temperature) VALUES (?, ?) "
                "ON CONFLICT(conversation_id) DO UPDATE SET temperature = excluded.temperature",
                (conversation_id, value),
            ),
            "save the temperature",
        )

    def close(self) -> None:
        """Close the database; closing twice is harmless (shutdown paths may both try)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._deferred:  # the store refused writes until the end: these turns stay pending
                log.warning("history store: %d write(s) could not be stored before closing", len(self._deferred))
            self._rollback()
            self._db.close()
