"""Connecting to the history database: one SQLAlchemy async engine for SQLite or PostgreSQL.

`LORABOT_DATABASE_URL` names the database the way people write it (`postgresql://user@host/db`,
`sqlite:///path`); this module picks the async driver (asyncpg, aiosqlite), sets each backend's
"wait for a lock this long" (SQLite's busy timeout, PostgreSQL's lock_timeout), and tells a passing
store error (locked, full, connection lost) from one that retrying cannot fix.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# aiosqlite logs every call into its thread at DEBUG: LORABOT_LOG_LEVEL=DEBUG would show little else
logging.getLogger("aiosqlite").setLevel(logging.INFO)

# driver each backend is reached with; the plain names are what people write
ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
ALIASES = {"postgres": "postgresql", "sqlite+aiosqlite": "sqlite", "postgresql+asyncpg": "postgresql"}
DRIVER_PACKAGES = {"sqlite": ("aiosqlite", "aiosqlite"), "postgresql": ("asyncpg", "lorabot[postgres]")}

# SQLSTATE classes/codes of PostgreSQL errors that pass (connection, deadlock or serialization,
# out of disk/memory, server shutting down, lock or statement timeout); others are bugs or bad data
_PASSING_SQLSTATE_CLASSES = {"08", "40", "53", "57"}
_PASSING_SQLSTATES = {"55P03", "55006"}


def parse_database_url(text: str) -> URL:
    """The async-driver URL for `text`, or ValueError saying what is accepted (never echoing it:
    a URL may carry a password)."""
    try:
        url = make_url(text.strip())
    except ArgumentError:
        raise ValueError(
            "must be a URL like postgresql://user:password@host/dbname or sqlite:///path"
        ) from None
    backend = ALIASES.get(url.drivername, url.drivername)
    if backend not in ASYNC_DRIVERS:
        raise ValueError(
            f"unsupported database {url.drivername!r}: use postgresql://user:password@host/dbname "
            "or sqlite:///path/to/history.sqlite3"
        )
    if backend == "sqlite" and not url.database:
        raise ValueError(
            "a SQLite URL needs a file: sqlite:///path/to/history.sqlite3 (no in-memory database)"
        )
    if backend == "postgresql" and not url.database:
        raise ValueError("name the database: postgresql://user:password@host/dbname")
    module, package = DRIVER_PACKAGES[backend]
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"needs the {module} driver: pip install '{package}'")
    return url.set(drivername=ASYNC_DRIVERS[backend])


def sqlite_url(path: object) -> str:
    return f"sqlite:///{path}"


def describe(url: URL) -> str:
    """The URL for logs and start-up errors: as people write it, without the password."""
    return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)


def create_engine(url: URL, *, lock_timeout_s: float) -> AsyncEngine:
    """An async engine whose writes wait up to `lock_timeout_s` for another writer's lock.

    SQLite: one pooled connection per process (writers take turns anyway), WAL so readers never
    wait for a writer, reads outside transactions, and `BEGIN IMMEDIATE` for writes (a connection
    that starts deferred and upgrades later can fail at COMMIT instead of waiting). PostgreSQL: a
    small pool; every statement gives up after `lock_timeout` rather than hanging behind a lock.
    """
    options: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        options = {"pool_size": 1, "max_overflow": 0, "connect_args": {"timeout": lock_timeout_s}}
    else:
        millis = str(int(lock_timeout_s * 1000))
        options = {
            "pool_size": 5,
            "max_overflow": 5,
            "pool_pre_ping": True,  # a restarted server's dead connections are replaced, not handed out
            "connect_args": {
                "server_settings": {"lock_timeout": millis},
                "timeout": max(lock_timeout_s, 1.0),
            },
        }
    # hide_parameters: a store error's text (logged) never carries what users wrote or were answered
    pool_timeout = max(lock_timeout_s * 4, 5.0)
    engine = create_async_engine(url, pool_timeout=pool_timeout, hide_parameters=True, **options)
    if url.get_backend_name() == "sqlite":
        _sqlite_transactions(engine.sync_engine, lock_timeout_s)
    return engine


WRITE = {"lorabot_write": True}  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)


def _sqlite_transactions(engine: sa.Engine, lock_timeout_s: float) -> None:
    """Let SQLAlchemy, not the sqlite3 module, begin transactions, and writes take the lock first."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(lock_timeout_s * 1000)}")
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() != "wal":  # WAL is kept in the file: switched once
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        # reads run without a transaction (each SELECT sees the last commit; in WAL mode it
        # never waits for a writer), which also spares them a round trip to the driver's thread
        if connection.get_execution_options().get("lorabot_write"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def is_sqlite_locked(error: BaseException) -> bool:
    """SQLite's 'database is locked': also raised at once, without the busy wait, when connections
    switch a new file to WAL together or would deadlock upgrading their locks; a retry gets through."""
    return isinstance(error, DBAPIError) and "database is locked" in str(error.orig)


def is_passing(error: BaseException | None) -> bool:
    """Whether a store error may go away by itself (locked, disk full, connection lost), so a
    write that failed with it is worth keeping for a retry."""
    if isinstance(error, (OSError, PoolTimeout)):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    if code:
        return code[:2] in _PASSING_SQLSTATE_CLASSES or code in _PASSING_SQLSTATES
    return isinstance(error, sa.exc.OperationalError)  # SQLite: locked, busy, disk full, read-only


def error_kind(error: BaseException) -> str:
    """An error for a log line that must not quote the data: its driver class and SQLSTATE."""
    orig = getattr(error, "orig", None) or error
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    driver = orig.__cause__ if isinstance(orig.__cause__, Exception) else orig  # asyncpg's own class
    return type(driver).__name__ + (f" (SQLSTATE {code})" if code else "")


def db_clock(dialect: str) -> sa.ColumnElement[float]:
    """The database's own time in epoch seconds: leases written by several hosts are compared on
    one clock, whatever the hosts' clocks say."""
    if dialect == "sqlite":
        return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)")
    return sa.literal_column("extract(epoch from clock_timestamp())::float8")
