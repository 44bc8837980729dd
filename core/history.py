"""Conversation history and per-conversation choices, in SQLite so they survive restarts.

SQLite calls are short; they run in a thread (`asyncio.to_thread`) behind one lock so the
event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from core.engines.base import Message

_SCHEMA = """
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


class HistoryStore:
    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def _run(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    async def _arun(self, sql: str, params: tuple = ()) -> list[tuple]:
        return await asyncio.to_thread(self._run, sql, params)

    async def recent(self, conversation_id: str, max_turns: int) -> list[Message]:
        """At most `max_turns` of the newest user/assistant exchanges, oldest first.

        The window's start moves in jumps of half the window rather than one turn at a time:
        the history prefix then stays identical for several turns, so the engine's KV cache for
        this conversation stays valid (a sliding window would force a full re-read every turn).
        """
        rows = await self._arun(
            "SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        )
        messages = [{"role": role, "content": content} for role, content in rows]
        turns = len(messages) // 2
        if turns > max_turns:
            step = max(1, max_turns // 2)
            start = -(-(turns - max_turns) // step) * step  # ceil to a multiple of step
            messages = messages[start * 2 :]
        while messages and messages[0]["role"] != "user":  # never start on a dangling reply
            messages.pop(0)
        return messages

    async def add_turn(self, conversation_id: str, user_text: str, reply_text: str) -> None:
        """Store a finished exchange; both sides together so history never holds half a turn."""
        now = time.time()

        def write() -> None:
            with self._lock:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO messages (conversation_id, role, content, created_at) VALUES (?, ?, ?, ?)",
                    [(conversation_id, "user", user_text, now), (conversation_id, "assistant", reply_text, now)],
                )
                self._db.execute("COMMIT")

        await asyncio.to_thread(write)

    async def forget(self, conversation_id: str) -> int:
        rows = await self._arun(
            "DELETE FROM messages WHERE conversation_id = ? RETURNING id", (conversation_id,)
        )
        return len(rows)

    async def model_choice(self, key: str) -> str | None:
        rows = await self._arun("SELECT model FROM model_choice WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    async def set_model_choice(self, key: str, model: str) -> None:
        await self._arun(
            "INSERT INTO model_choice (key, model) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET model = excluded.model",
            (key, model),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
