"""Conversation history and per-conversation choices, in a database so they survive restarts.

One implementation on SQLAlchemy Core for both databases (SQLite by default, PostgreSQL when
several bot processes share state; core/database.py connects, core/schema.py migrates).

A question is stored as a pending turn when it is accepted, so a killed process loses nothing:
the next start marks it interrupted and the adapter can mark its half-shown reply. Every write is
one transaction, rolled back on error, and a store error becomes `StoreUnavailable` (a polite
`ChatError`) instead of breaking every later write. Every text is cleaned before it is bound
(core.schema.CleanText: no NUL, no lone surrogate). A write that cannot wait (the end of a reply)
is kept when the store refuses it for a passing reason and retried, in a transaction of its own,
before the next write; one that then fails for good is dropped and logged.

Several processes may share one database: each keeps a lease (a heartbeat row) so the others can
tell a process that stopped from one that is busy, also across hosts (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core import database, metrics
from core.engines.base import Message
from core.errors import StoreUnavailable
from core.schema import (
    SCHEMA_VERSION,
    answer_versions,
    conversation_options,
    migrate,
    model_choice,
    persona_choice,
    processes,
    ratings,
    reply_messages,
    turns,
)
from core.turns import InterruptedReply, TurnState, owner_alive, process_owner

__all__ = ["SCHEMA_VERSION", "ConversationStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Statements = tuple[sa.Executable, ...]  # one write: stored together or not at all

BUSY_TIMEOUT_S = 5.0  # how long a write waits for another connection's lock before giving up
OPEN_RETRY_S = 0.05  # between tries to open a SQLite file that another process is setting up
PRUNE_EVERY_S = 3600.0
MAX_DEFERRED = 1000  # settle/delivery writes kept for a retry while the store refuses writes
LEASE_S = 60.0  # a process whose heartbeat is older than this is gone (when its pid can't be checked)
STORE_ERRORS = (SQLAlchemyError, OSError)  # OSError: a PostgreSQL server that cannot be reached


async def delete_turns(db: AsyncConnection, which: sa.ColumnElement[bool]) -> list[str]:
    """Delete the turns `which` selects with everything kept about them (ratings, replaced
    answers, message refs); returns their states. Explicit deletes rather than foreign-key
    cascades: SQLite enforces those only per connection, when asked."""
    ids = sa.select(turns.c.id).where(which).scalar_subquery()
    for table in (ratings, answer_versions, reply_messages):
        await db.execute(sa.delete(table).where(table.c.turn_id.in_(ids)))
    return list((await db.execute(sa.delete(turns).where(which).returning(turns.c.state))).scalars())


class ConversationStore:
    """Per-conversation turns (questions, replies, their state) and choices (model, temperature)."""

    def __init__(
        self,
        target: Path | str | URL,
        *,
        keep_days: float = 0,
        busy_timeout_s: float | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        """A store on `target`: a SQLite file's path, or a database URL (see core/database.py).
        Nothing is opened yet: the first call (or `open`) connects, creates or migrates the schema.
        `keep_days` > 0 prunes older turns."""
        if isinstance(target, Path) or (isinstance(target, str) and "://" not in target):
            target = database.sqlite_url(Path(target))
        self.url = target if isinstance(target, URL) else database.parse_database_url(target)
        if self.url.get_backend_name() == "sqlite":
            Path(self.url.database or "").parent.mkdir(parents=True, exist_ok=True)
        timeout = BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s
        self._lock_timeout_s = timeout
        self.engine: AsyncEngine = database.create_engine(self.url, lock_timeout_s=timeout)
        self._writer = self.engine.execution_options(**database.WRITE)
        self.dialect = self.url.get_backend_name()
        self.keep_days = keep_days
        self.lease_s = lease_s
        self._pruned_at = float("-inf")
        self._opened = False
        self._closed = False
        self._open_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()  # one write at a time from this process (as SQLite does anyway)
        self._lease_task: asyncio.Task[None] | None = None
        # settle/delivery writes that failed, applied before the next write: key -> statements
        self._deferred: dict[tuple[str, int], Statements] = {}

    @classmethod
    async def open(cls, target: Path | str | URL, **options: Any) -> ConversationStore:
        """A store that is connected and migrated (what ChatService.start uses)."""
        store = cls(target, **options)
        try:
            await store.ready()
        except BaseException:
            await store.close()
            raise
        return store

    async def ready(self) -> None:
        """Connect, bring the schema to SCHEMA_VERSION, take this process's lease, start its heartbeat."""
        if self._opened:
            return
        async with self._open_lock:
            if self._opened:
                return
            give_up_at = time.monotonic() + self._lock_timeout_s
            while True:
                try:
                    async with self._writer.begin() as db:
                        await migrate(db)
                        await self._heartbeat(db)
                    break
                except STORE_ERRORS as error:
                    if database.is_sqlite_locked(error) and time.monotonic() < give_up_at:
                        await asyncio.sleep(OPEN_RETRY_S)  # processes starting together on a new file
                        continue
                    where = database.describe(self.url)  # no password
                    metrics.store_error("open")
                    log.warning("history store: cannot open %s: %s", where, error)
                    raise StoreUnavailable(f"open the conversation history at {where}") from error
            self._opened = True
            self._lease_task = asyncio.create_task(self._keep_lease(), name="history-lease")

    @property
    def deferred_writes(self) -> int:
        """Writes kept in memory until the store takes them again (metrics)."""
        return len(self._deferred)

    async def ping(self, timeout_s: float = 3.0) -> None:
        """`SELECT 1` on a fresh or pooled connection within `timeout_s` (/readyz); raises
        `StoreUnavailable` when the database does not answer."""

        async def work(db: AsyncConnection) -> None:
            await db.execute(sa.text("SELECT 1"))

        try:
            async with asyncio.timeout(timeout_s):
                await self._read(work, "answer a health check")
        except TimeoutError:
            metrics.store_error("read")
            raise StoreUnavailable("answer a health check") from None

    # -- plumbing ---------------------------------------------------------------------------
    async def _read(self, work: Callable[[AsyncConnection], Awaitable[T]], action: str) -> T:
        await self.ready()
        try:
            async with self.engine.connect() as db:
                return await work(db)
        except STORE_ERRORS as error:
            log.warning("history store: cannot %s: %s", action, error)
            metrics.store_error("read")
            raise StoreUnavailable(action) from error

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[T]], action: str) -> T:
        """Run `work` in one transaction (all of it is stored, or none), after the deferred writes.

        While a deferred write still fails for a passing reason, `work` is not tried (the kept
        writes go in first, and the store would refuse it for the same reason)."""
        await self.ready()
        async with self._write_lock:
            if (error := await self._replay_deferred()) is not None:
                log.warning("history store: cannot %s: %s", action, error)
                metrics.store_error("write")
                raise StoreUnavailable(action) from error
            try:
                async with self._writer.begin() as db:
                    return await work(db)
            except STORE_ERRORS as error:
                log.warning("history store: cannot %s: %s", action, error)
                metrics.store_error("write")
                raise StoreUnavailable(action) from error

    async def _replay_deferred(self) -> BaseException | None:
        """Store the deferred writes, each in its own transaction (call with `_write_lock` held).

        One that fails for a reason that will not pass (bad data, a constraint) is dropped and
        logged by its key, never its text: kept, it would fail every later write. Returns the
        error of one that failed for a passing reason (it and those after it are kept), else None."""
        stored = 0
        for key, statement in list(self._deferred.items()):
            try:
                async with self._writer.begin() as db:
                    for part in statement:
                        await db.execute(part)
            except Exception as error:  # noqa: BLE001 - anything that will not pass is dropped
                if isinstance(error, STORE_ERRORS) and database.is_passing(error):
                    if stored:
                        log.info("history store: %d deferred write(s) stored", stored)
                    return error
                if self._deferred.get(key) is statement:
                    del self._deferred[key]
                log.warning(
                    "history store: dropped the deferred write %s of turn %s, which cannot be stored: %s",
                    key[0], key[1], database.error_kind(error),
                )  # fmt: skip
                continue
            stored += 1
            if self._deferred.get(key) is statement:  # not replaced by a newer version meanwhile
                del self._deferred[key]
        if stored:
            log.info("history store: %d deferred write(s) stored", stored)
        return None

    async def _write_or_defer(self, key: tuple[str, int], statement: Statements, action: str) -> bool:
        """For writes whose caller cannot wait or fail (the end of a reply, a delivery record):
        on a passing error keep the write and apply it with the next one that succeeds."""

        async def work(db: AsyncConnection) -> None:
            for part in statement:
                await db.execute(part)

        try:
            await self._write(work, action)
            return True
        except StoreUnavailable as error:
            if not database.is_passing(error.__cause__):
                return False  # retrying would fail every later write too
            self._deferred.pop(key, None)  # the newest version of this write goes last
            self._deferred[key] = statement
            metrics.store_deferred()
            while len(self._deferred) > MAX_DEFERRED:
                dropped = next(iter(self._deferred))
                log.warning("history store: dropping deferred write %s", dropped)
                del self._deferred[dropped]
            return False

    def _insert(self, table: sa.Table) -> Any:
        """INSERT with the backend's ON CONFLICT (the same SQL on both; SQLAlchemy has one per dialect)."""
        return (sqlite_insert if self.dialect == "sqlite" else postgresql_insert)(table)

    async def _upsert(self, table: sa.Table, key: str, values: Mapping[str, object], action: str) -> None:
        statement = self._insert(table).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=[key], set_={name: statement.excluded[name] for name in values if name != key}
        )

        async def work(db: AsyncConnection) -> None:
            await db.execute(statement)

        await self._write(work, action)

    # -- for the modules that keep their own tables in this store (core.feedback_store) ---------
    async def read(self, work: Callable[[AsyncConnection], Awaitable[T]], action: str) -> T:
        """Run `work` on a connection; a store error becomes `StoreUnavailable(action)`."""
        return await self._read(work, action)

    async def write(self, work: Callable[[AsyncConnection], Awaitable[T]], action: str) -> T:
        """Run `work` in one write transaction, after the deferred writes (see `_write`)."""
        return await self._write(work, action)

    def insert(self, table: sa.Table) -> Any:
        """An INSERT that takes this backend's ON CONFLICT clauses."""
        return self._insert(table)

    # -- leases -----------------------------------------------------------------------------
    async def _heartbeat(self, db: AsyncConnection) -> None:
        now = database.db_clock(self.dialect)
        statement = self._insert(processes).values(owner=process_owner(), heartbeat_at=now)
        await db.execute(
            statement.on_conflict_do_update(index_elements=["owner"], set_={"heartbeat_at": now})
        )

    async def _renew_lease(self) -> None:
        """The heartbeat in a transaction of its own, outside `_write_lock`: a deferred write that
        keeps failing, or a write waiting for a lock, never makes this process look gone to the
        others (who would mark its turns interrupted while it still answers them)."""
        try:
            async with self._writer.begin() as db:
                await self._heartbeat(db)
        except STORE_ERRORS as error:
            log.warning("history store: cannot renew this process's lease: %s", error)
            metrics.store_error("lease")
            raise StoreUnavailable("renew this process's lease") from error

    async def _keep_lease(self) -> None:
        """Renew this process's lease a few times per lease period; then store writes deferred
        while the store refused them, and mark the turns of processes that went away meanwhile."""
        failing = False
        while True:
            await asyncio.sleep(self.lease_s / 4)
            try:
                await self._renew_lease()
                if failing:
                    log.info("history store: lease renewed again")
                failing = False
            except StoreUnavailable:
                failing = True  # logged; the next round tries again
            with contextlib.suppress(StoreUnavailable):  # logged by _write; tried again next round
                await self._recover(own_turns_dead=False)  # a write: the deferred ones go in first

    # -- turns ------------------------------------------------------------------------------
    async def begin_turn(self, conversation_id: str, question: str, *, user_key: str | None = None) -> int:
        """Store an accepted question as a pending turn (`user_key`: who asked, a pseudonym, so
        /forget finds it); returns its id."""
        now = time.time()
        statement = (
            sa.insert(turns)
            .values(
                conversation_id=conversation_id,
                question=question,
                user_key=user_key,
                state="pending",
                owner=process_owner(),
                created_at=now,
                updated_at=now,
            )
            .returning(turns.c.id)
        )

        async def work(db: AsyncConnection) -> int:
            turn_id = (await db.execute(statement)).scalar_one()
            if self.keep_days and now - self._pruned_at >= PRUNE_EVERY_S:
                await self._prune(db, now)
            return int(turn_id)

        return await self._write(work, "save this conversation")

    async def finish_turn(
        self,
        turn_id: int,
        state: TurnState,
        answer: str = "",
        *,
        question: str | None = None,
        model: str | None = None,
        model_file: str | None = None,
    ) -> bool:
        """Settle a pending turn (`question` replaces the stored one, e.g. by the part the model
        read; `model`/`model_file`: what answered). Never raises for a store error: the write is
        kept and retried with the next one, and False says so. A turn already settled or forgotten
        is left alone."""
        values: dict[str, Any] = {
            "state": state,
            "answer": answer,
            "question": sa.func.coalesce(sa.literal(question, turns.c.question.type), turns.c.question),
            "updated_at": time.time(),
        }
        if model is not None:
            values |= {"model": model, "model_file": model_file}
        statement = sa.update(turns).where(turns.c.id == turn_id, turns.c.state == "pending").values(values)
        return await self._write_or_defer(("finish", turn_id), (statement,), "save a reply")

    async def add_turn(self, conversation_id: str, user_text: str, reply_text: str) -> None:
        """Store a finished exchange in one write (imports, tests)."""
        now = time.time()
        statement = sa.insert(turns).values(
            conversation_id=conversation_id,
            question=user_text,
            answer=reply_text,
            state="answered",
            created_at=now,
            updated_at=now,
        )

        async def work(db: AsyncConnection) -> None:
            await db.execute(statement)

        await self._write(work, "save this conversation")

    async def record_delivery(self, turn_id: int, platform: str, handles: list[str], shown: str) -> bool:
        """Remember where a turn's reply is shown and what it shows, and which turn each of its
        messages belongs to (a reaction on any of them finds it); deferred like `finish_turn`."""
        statements: list[sa.Executable] = [
            sa.update(turns)
            .where(turns.c.id == turn_id)
            .values(platform=platform, handles=json.dumps(list(handles)), shown=shown)
        ]
        if handles:
            rows = [{"platform": platform, "ref": ref, "turn_id": turn_id} for ref in dict.fromkeys(handles)]
            insert = self._insert(reply_messages).values(rows)
            statements.append(
                insert.on_conflict_do_update(
                    index_elements=["platform", "ref"], set_={"turn_id": insert.excluded.turn_id}
                )
            )
        return await self._write_or_defer(("delivery", turn_id), tuple(statements), "record a delivery")

    async def latest_answered(self, conversation_id: str) -> int | None:
        """The id of the conversation's newest answered turn (what /good, /bad and /retry mean)."""
        answered = sa.and_(turns.c.conversation_id == conversation_id, turns.c.state == "answered")

        async def work(db: AsyncConnection) -> int | None:
            return (await db.execute(sa.select(sa.func.max(turns.c.id)).where(answered))).scalar()

        return await self._read(work, "read this conversation")

    async def reply_refs(self, turn_id: int) -> tuple[str, list[str]]:
        """(platform, refs of the turn's reply messages in order); ("", []) when unknown."""

        async def work(db: AsyncConnection) -> tuple[str, list[str]]:
            query = sa.select(turns.c.platform, turns.c.handles).where(turns.c.id == turn_id)
            row = (await db.execute(query)).first()
            return (row[0] or "", json.loads(row[1])) if row else ("", [])

        return await self._read(work, "read a reply's messages")

    async def turn_state(self, turn_id: int) -> TurnState | None:
        """A turn's state (None once forgotten or pruned)."""

        async def work(db: AsyncConnection) -> TurnState | None:
            return (await db.execute(sa.select(turns.c.state).where(turns.c.id == turn_id))).scalar()

        return await self._read(work, "read a turn")

    async def recover(self) -> int:
        """Mark the pending turns of processes that no longer run as interrupted (those shown on a
        platform become due for `take_interrupted`), and prune; returns how many were marked.
        Called at start, where this process's own pending turns are leftovers of an earlier store."""
        marked = await self._recover(own_turns_dead=True)
        if self.keep_days:
            await self.prune()
        return marked

    async def _recover(self, *, own_turns_dead: bool) -> int:
        me = process_owner()

        async def work(db: AsyncConnection) -> int:
            pending = turns.c.state == "pending"
            owners = (await db.execute(sa.select(turns.c.owner).where(pending).distinct())).scalars().all()
            if not owners:
                return 0
            fresh_since = database.db_clock(self.dialect) - self.lease_s
            leased = sa.select(processes.c.owner).where(
                processes.c.owner.in_([owner for owner in owners if owner]),
                processes.c.heartbeat_at >= fresh_since,
            )
            fresh = set((await db.execute(leased)).scalars())
            dead = [
                owner
                for owner in owners
                if (own_turns_dead if owner == me else not owner_alive(owner, lease_fresh=owner in fresh))
            ]
            if not dead:
                return 0
            whose: sa.ColumnElement[bool] = turns.c.owner.in_([owner for owner in dead if owner])
            if None in dead:
                whose = sa.or_(whose, turns.c.owner.is_(None))
            shown = sa.and_(turns.c.platform.is_not(None), turns.c.handles != "[]")
            result = await db.execute(
                sa.update(turns)
                .where(pending, whose)
                .values(state="interrupted", updated_at=time.time(), notice_due=sa.case((shown, 1), else_=0))
            )
            return int(result.rowcount or 0)

        marked = await self._write(work, "open the conversation history")
        if marked:
            log.warning("history store: %d reply(s) of a stopped process marked interrupted", marked)
        return marked

    async def take_interrupted(self, platform: str) -> list[InterruptedReply]:
        """The turns due for an 'interrupted' mark on `platform`, each returned once (also when
        several processes ask at once: the UPDATE claims each row for one of them)."""
        statement = (
            sa.update(turns)
            .where(turns.c.notice_due == 1, turns.c.platform == platform)
            .values(notice_due=0)
            .returning(turns.c.id, turns.c.conversation_id, turns.c.handles, turns.c.shown)
        )

        async def work(db: AsyncConnection) -> list[InterruptedReply]:
            rows = (await db.execute(statement)).all()
            return [
                InterruptedReply(turn_id, conversation, json.loads(handles), shown)
                for turn_id, conversation, handles, shown in sorted(rows)
            ]

        return await self._write(work, "read the interrupted replies")

    async def _prune(self, db: AsyncConnection, now: float) -> None:
        cutoff = now - self.keep_days * 86400
        old = sa.and_(turns.c.created_at < cutoff, turns.c.state != "pending")
        removed = len(await delete_turns(db, old))
        # leases of processes gone for a day (a row per process start would pile up otherwise)
        gone = database.db_clock(self.dialect) - max(86400.0, self.lease_s * 10)
        await db.execute(sa.delete(processes).where(processes.c.heartbeat_at < gone))
        self._pruned_at = now
        if removed:
            log.info("history store: pruned %d turn(s) older than %g days", removed, self.keep_days)

    async def prune(self) -> None:
        """Delete turns older than `keep_days` (no-op when it is 0)."""
        if self.keep_days:
            await self._write(lambda db: self._prune(db, time.time()), "prune the history")

    async def recent(self, conversation_id: str, max_turns: int) -> list[Message]:
        """At most `max_turns` of the newest answered exchanges, oldest first.

        The window's start moves in jumps of half the window rather than one turn at a time:
        the history prefix then stays identical for several turns, so the engine's KV cache for
        this conversation stays valid (a sliding window would force a full re-read every turn).
        """
        answered = sa.and_(turns.c.conversation_id == conversation_id, turns.c.state == "answered")

        async def work(db: AsyncConnection) -> list[tuple[str, str]]:
            count = (
                await db.execute(sa.select(sa.func.count()).select_from(turns).where(answered))
            ).scalar_one()
            keep = count
            if count > max_turns:
                step = max(1, max_turns // 2)
                start = -(-(count - max_turns) // step) * step  # ceil to a multiple of step
                keep = count - start
            window = (
                sa.select(turns.c.question, turns.c.answer)
                .where(answered)
                .order_by(turns.c.id.desc())
                .limit(keep)
            )
            return [(question, answer) for question, answer in (await db.execute(window)).all()]

        rows = await self._read(work, "read this conversation")
        messages: list[Message] = []
        for question, answer in reversed(rows):
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return messages

    async def forget(self, conversation_id: str) -> int:
        """Delete the conversation's turns, pending ones included; returns the messages removed."""

        async def work(db: AsyncConnection) -> list[str]:
            return await delete_turns(db, turns.c.conversation_id == conversation_id)

        states = await self._write(work, "forget this conversation")
        return sum(2 if state == "answered" else 1 for state in states)

    # -- choices ----------------------------------------------------------------------------
    async def model_choice(self, key: str) -> str | None:
        async def work(db: AsyncConnection) -> str | None:
            return (
                await db.execute(sa.select(model_choice.c.model).where(model_choice.c.key == key))
            ).scalar()

        return await self._read(work, "read the model choice")

    async def set_model_choice(self, key: str, model: str) -> None:
        await self._upsert(model_choice, "key", {"key": key, "model": model}, "save the model choice")

    async def choices(self, keys: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        """key -> (its model choice, its persona choice), for the keys with either; one read."""

        async def work(db: AsyncConnection) -> dict[str, tuple[str | None, str | None]]:
            found: dict[str, tuple[str | None, str | None]] = {}
            models = await db.execute(
                sa.select(model_choice.c.key, model_choice.c.model).where(model_choice.c.key.in_(keys))
            )
            for key, model in models:
                found[key] = (model, None)
            personas = await db.execute(
                sa.select(persona_choice.c.key, persona_choice.c.persona).where(
                    persona_choice.c.key.in_(keys)
                )
            )
            for key, persona in personas:
                found[key] = (found.get(key, (None, None))[0], persona)
            return found

        return await self._read(work, "read the model and persona choices")

    async def set_persona_choice(self, key: str, persona: str | None, *, clear_model: bool = False) -> None:
        """`key`'s persona (None: none of its own); `clear_model` also drops its model choice, in the
        same write (a persona with a model wins over a /model chosen before it)."""
        if persona is not None:
            upsert = self._insert(persona_choice).values(key=key, persona=persona)
            statement: sa.Executable = upsert.on_conflict_do_update(
                index_elements=["key"], set_={"persona": upsert.excluded.persona}
            )
        else:
            statement = sa.delete(persona_choice).where(persona_choice.c.key == key)

        async def work(db: AsyncConnection) -> None:
            await db.execute(statement)
            if clear_model:
                await db.execute(sa.delete(model_choice).where(model_choice.c.key == key))

        await self._write(work, "save the persona choice")

    async def temperature(self, conversation_id: str) -> float | None:
        options = conversation_options.c

        async def work(db: AsyncConnection) -> float | None:
            query = sa.select(options.temperature).where(options.conversation_id == conversation_id)
            return (await db.execute(query)).scalar()

        return await self._read(work, "read the temperature")

    async def set_temperature(self, conversation_id: str, value: float | None) -> None:
        values = {"conversation_id": conversation_id, "temperature": value}
        await self._upsert(conversation_options, "conversation_id", values, "save the temperature")

    async def close(self) -> None:
        """Stop the lease and close the connections; closing twice is harmless (shutdown paths
        may both try). Writes still deferred are lost: those turns stay pending until a restart."""
        if self._closed:
            return
        self._closed = True
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        if self._deferred:  # the store refused writes until the end: these turns stay pending
            log.warning("history store: %d write(s) could not be stored before closing", len(self._deferred))
        await self.engine.dispose()
