"""Reading what the bot stored about ratings, for the platforms' feedback tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from support.waiting import until


def rows(service, sql: str, *args) -> list[tuple]:
    """Read the service's SQLite database directly (what a person checking it would see)."""
    path = Path(service.settings.data_dir) / "history.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(sql, args).fetchall()


async def stored_ratings(service) -> set[tuple[int, int, str, int]]:
    """(turn, version, rater pseudonym, value) once every rating handed in so far is written."""
    await service.feedback_flushed()
    return set(rows(service, "SELECT turn_id, version, rater_key, value FROM ratings"))


async def until_ratings(service, expected: set) -> None:
    """A bot handles platform events on its own schedule: wait until the store shows `expected`."""

    async def matches() -> bool:
        return await stored_ratings(service) == expected

    try:
        await until(matches, timeout=10)
    except TimeoutError:
        raise AssertionError(f"ratings {await stored_ratings(service)} never became {expected}") from None
