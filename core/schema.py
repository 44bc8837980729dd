"""The history database's tables and their migrations, one definition for SQLite and PostgreSQL.

The schema version is kept in the `schema_version` table (one row). SQLite files written before
that table existed kept it in `PRAGMA user_version` (0: a new file, or the first layout with a
`messages` table; 1: turns and model choices; 2: conversation options), which is read when the
table is absent and still written, so an older lorabot refuses a newer file instead of
misreading it. Every migration runs in one transaction; on PostgreSQL an advisory lock makes
processes starting together take turns (on SQLite, BEGIN IMMEDIATE does).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from core.errors import ChatError
from core.limits import clean_model_text

log = logging.getLogger(__name__)

SCHEMA_VERSION = 6
MIGRATION_LOCK = 0x6C6F7261  # pg_advisory_xact_lock key ("lora"): one migrating process at a time


class CleanText(sa.types.TypeDecorator[str]):
    """TEXT whose every bound value is cleaned first (core.limits.clean_model_text): a NUL or a lone
    surrogate from a model, a remote server or a platform can then never make a write fail
    (PostgreSQL refuses NUL with SQLSTATE 22021; neither driver can encode a lone surrogate), nor a
    deferred write that would be retried again and again."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return clean_model_text(value) if isinstance(value, str) else value


metadata = sa.MetaData()
# Integer on SQLite: only an INTEGER PRIMARY KEY is the rowid (and AUTOINCREMENT never reuses ids)
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

turns = sa.Table(
    "turns",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", CleanText, nullable=False),
    sa.Column("question", CleanText, nullable=False),
    sa.Column("answer", CleanText, nullable=False, server_default=""),
    sa.Column("state", CleanText, nullable=False),
    sa.Column("owner", CleanText),  # the process writing it (core.turns.process_owner)
    sa.Column("platform", CleanText),  # where the reply is shown, set by record_delivery
    sa.Column("handles", CleanText, nullable=False, server_default="[]"),  # JSON list of message handles
    sa.Column("shown", CleanText, nullable=False, server_default=""),  # the reply text shown so far
    sa.Column("notice_due", sa.Integer, nullable=False, server_default="0"),  # take_interrupted clears it
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    # v4 (feedback): who asked, as a salted pseudonym (core.feedback.Pseudonyms), never a platform id
    sa.Column("user_key", CleanText),
    sa.Column("model", CleanText),  # the registered name that answered
    sa.Column("model_file", CleanText),  # that model file's identity (core.fingerprint)
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),  # +1 per regenerate
    sa.CheckConstraint("state IN ('pending', 'answered', 'interrupted', 'failed')", name="turns_state"),
    sqlite_autoincrement=True,
)
_turn_indexes = [
    sa.Index("turns_by_conversation", turns.c.conversation_id, turns.c.state, turns.c.id),
    sa.Index("turns_by_age", turns.c.created_at),
    sa.Index(
        "turns_pending",
        turns.c.id,
        sqlite_where=turns.c.state == "pending",
        postgresql_where=turns.c.state == "pending",
    ),
    sa.Index(
        "turns_notice_due",
        turns.c.platform,
        sqlite_where=turns.c.notice_due == 1,
        postgresql_where=turns.c.notice_due == 1,
    ),
]
model_choice = sa.Table(
    "model_choice",
    metadata,
    sa.Column("key", CleanText, primary_key=True),  # a conversation id, or 'scope:' + a scope id
    sa.Column("model", CleanText, nullable=False),
)
conversation_options = sa.Table(
    "conversation_options",
    metadata,
    sa.Column("conversation_id", CleanText, primary_key=True),
    sa.Column("temperature", sa.Double),  # NULL: the model's or the global default
)
processes = sa.Table(  # leases: who is alive, for processes whose pid this host cannot check
    "processes",
    metadata,
    sa.Column("owner", CleanText, primary_key=True),
    sa.Column("heartbeat_at", sa.Double, nullable=False),  # the database's clock (core.database.db_clock)
)
# -- v4: feedback -------------------------------------------------------------------------------
answer_versions = sa.Table(  # answers replaced by a regenerate (the turn keeps the one that stayed)
    "answer_versions",
    metadata,
    sa.Column("turn_id", _Id, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("answer", CleanText, nullable=False),
    sa.Column("model", CleanText),
    sa.Column("model_file", CleanText),
    sa.Column("created_at", sa.Double, nullable=False),  # when that answer was written
    sa.Column("replaced_at", sa.Double, nullable=False),
)
ratings = sa.Table(  # one rating per rater of one answer (a turn's version): a group member counts once
    "ratings",
    metadata,
    sa.Column("turn_id", _Id, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("rater_key", CleanText, primary_key=True),  # salted pseudonym
    sa.Column("value", sa.Integer, nullable=False),
    sa.Column("model", CleanText),  # copied from the rated answer: reports group by it
    sa.Column("model_file", CleanText),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.CheckConstraint("value IN (-1, 1)", name="ratings_value"),
)
reply_messages = sa.Table(  # every platform message of a reply -> its turn (reactions find turns)
    "reply_messages",
    metadata,
    sa.Column("platform", CleanText, primary_key=True),
    sa.Column("ref", CleanText, primary_key=True),
    sa.Column("turn_id", _Id, nullable=False),
)
feedback_opt_out = sa.Table(  # /feedback off: no ratings stored, conversations left out of exports
    "feedback_opt_out",
    metadata,
    sa.Column("user_key", CleanText, primary_key=True),
    sa.Column("since", sa.Double, nullable=False),
)
store_secrets = sa.Table(  # the pseudonym salt, made once per database (never exported)
    "store_secrets",
    metadata,
    sa.Column("name", CleanText, primary_key=True),
    sa.Column("value", CleanText, nullable=False),
)
_feedback_indexes = [
    sa.Index("turns_by_user", turns.c.user_key),
    sa.Index("ratings_by_rater", ratings.c.rater_key),
    sa.Index("ratings_by_model", ratings.c.model, ratings.c.model_file),
    sa.Index("reply_messages_by_turn", reply_messages.c.turn_id),
]
# -- v5: live A/B (core/ab.py) ------------------------------------------------------------------
ab_tests = sa.Table(  # one row per A/B test of a candidate against a served model name
    "ab_tests",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("name", CleanText, nullable=False),  # the served name whose conversations are split
    sa.Column("candidate", CleanText, nullable=False),  # the registered model a share of them gets
    sa.Column("share", sa.Double, nullable=False),  # of new conversations, to the candidate
    # 1 while running, NULL once stopped: the unique constraint allows one running test at most
    # (NULLs never collide, on SQLite and PostgreSQL alike)
    sa.Column("running", sa.Integer, unique=True),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("changed_at", sa.Double, nullable=False),  # the share last set
    sa.Column("stopped_at", sa.Double),
    sa.CheckConstraint("share > 0 AND share < 1", name="ab_tests_share"),
    sa.CheckConstraint("running = 1", name="ab_tests_running"),
    sqlite_autoincrement=True,
)
ab_arms = sa.Table(  # sticky arms: the first process to route a conversation decides for all
    "ab_arms",
    metadata,
    sa.Column("test_id", _Id, primary_key=True, autoincrement=False),
    # HMAC of the conversation id with the pseudonym salt (core.ab.conversation_key): no platform id
    sa.Column("conversation_key", CleanText, primary_key=True),
    sa.Column("arm", CleanText, nullable=False),
    sa.Column("assigned_at", sa.Double, nullable=False),
    sa.CheckConstraint("arm IN ('control', 'candidate')", name="ab_arms_arm"),
)
# -- v6: personas (docs/personas.md) ------------------------------------------------------------
persona_choice = sa.Table(  # like model_choice: a conversation's persona, or a scope's default
    "persona_choice",
    metadata,
    sa.Column("key", CleanText, primary_key=True),  # a conversation id, or 'scope:' + a scope id
    sa.Column("persona", CleanText, nullable=False),  # a persona's name in the models file
)
schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

Migration = Callable[[AsyncConnection], Awaitable[None]]


async def _create(db: AsyncConnection, *items: sa.Table | sa.Index) -> None:
    for item in items:

        def create(sync: sa.Connection, item: sa.Table | sa.Index = item) -> None:
            item.create(sync, checkfirst=True)

        await db.run_sync(create)


async def _to_v1(db: AsyncConnection) -> None:
    """Turns and model choices; the first layout's messages become answered turns (a user
    message paired with the assistant message right after it in its conversation)."""
    had_messages = await db.run_sync(lambda sync: sa.inspect(sync).has_table("messages"))
    await _create(db, turns, *_turn_indexes, model_choice)
    if had_messages:  # only SQLite files ever had this layout
        kept = (
            await db.execute(
                sa.text(
                    """INSERT INTO turns (conversation_id, question, answer, state, created_at, updated_at)
                    SELECT q.conversation_id, q.content, a.content, 'answered', q.created_at, a.created_at
                    FROM messages AS q JOIN messages AS a ON a.id = (
                        SELECT min(n.id) FROM messages AS n
                        WHERE n.conversation_id = q.conversation_id AND n.id > q.id
                    )
                    WHERE q.role = 'user' AND a.role = 'assistant'
                    ORDER BY q.id"""
                )
            )
        ).rowcount
        await db.execute(sa.text("DROP TABLE messages"))
        log.info("history store: %d stored exchange(s) moved to the turns table", kept)


async def _to_v2(db: AsyncConnection) -> None:
    """Per-conversation options (the sampling temperature chosen with /temperature)."""
    await _create(db, conversation_options)


async def _to_v3(db: AsyncConnection) -> None:
    """Process leases (several processes, possibly on several hosts, on one database) and the
    schema version table itself."""
    await _create(db, processes, schema_version)


async def _to_v4(db: AsyncConnection) -> None:
    """Feedback: who asked each turn (pseudonym), which model file answered, regenerated answers,
    ratings, the messages of each reply, opt-outs, and the pseudonym salt."""
    present = await db.run_sync(lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("turns")})
    for column in ("user_key", "model", "model_file", "version"):
        if column in present:
            continue
        kind = "INTEGER NOT NULL DEFAULT 0" if column == "version" else "TEXT"
        await db.exec_driver_sql(f"ALTER TABLE turns ADD COLUMN {column} {kind}")
    await _create(db, answer_versions, ratings, reply_messages, feedback_opt_out, store_secrets)
    await _create(db, *_feedback_indexes)


async def _to_v5(db: AsyncConnection) -> None:
    """Live A/B: the tests and each conversation's sticky arm."""
    await _create(db, ab_tests, ab_arms)


async def _to_v6(db: AsyncConnection) -> None:
    """Personas: the persona each conversation (or scope, as a default) chose."""
    await _create(db, persona_choice)


MIGRATIONS: list[Migration] = [_to_v1, _to_v2, _to_v3, _to_v4, _to_v5, _to_v6]  # [v] makes v + 1


async def stored_version(db: AsyncConnection) -> int:
    if await db.run_sync(lambda sync: sa.inspect(sync).has_table("schema_version")):
        version = (await db.execute(sa.select(schema_version.c.version))).scalar()
        if version is not None:
            return int(version)
    if db.dialect.name == "sqlite":
        return int((await db.exec_driver_sql("PRAGMA user_version")).scalar() or 0)
    return 0


async def migrate(db: AsyncConnection) -> int:
    """Bring the database to SCHEMA_VERSION inside the caller's (write) transaction; returns the
    version found. A newer database than this lorabot knows is refused, not touched."""
    if db.dialect.name == "postgresql":
        await db.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
    version = await stored_version(db)
    if version > SCHEMA_VERSION:
        raise ChatError(
            f"The history database has schema version {version}; this lorabot knows up to "
            f"{SCHEMA_VERSION}. Upgrade lorabot or point LORABOT_DATABASE_URL at another database."
        )
    if version == SCHEMA_VERSION:
        return version
    for step in MIGRATIONS[version:]:
        await step(db)
    await db.execute(sa.delete(schema_version))
    await db.execute(sa.insert(schema_version).values(version=SCHEMA_VERSION))
    if db.dialect.name == "sqlite":
        await db.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
    if version:
        log.info("history store migrated from schema %d to %d", version, SCHEMA_VERSION)
    return version
