"""The feedback tables' reads and writes: ratings, regenerated answers, opt-outs, /forget.

They live in the history database (core/schema.py, v4) and go through `ConversationStore`'s
transactions, so SQLite and PostgreSQL behave alike. People appear only as salted pseudonyms
(core.feedback.Pseudonyms); the platform ids stay in the conversation ids, which never leave in an
export (core/feedback_export.py).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from core import metrics
from core.errors import CannotRegenerate
from core.history import ConversationStore, delete_turns
from core.schema import (
    answer_versions,
    conversation_options,
    feedback_opt_out,
    model_choice,
    persona_choice,
    ratings,
    reply_messages,
    store_secrets,
    turns,
)
from core.turns import process_owner

log = logging.getLogger(__name__)
SALT_NAME = "pseudonym_salt"
# What a rating waits for: a reaction for its message's ref (a new message is recorded at once,
# and most reactions on messages not ours never match: a few rounds), a rating of a turn for the
# turn to settle (its answer is stored when the platform has answered the final edit, and a quick
# 👍 on the buttons that came with it can beat that: seconds).
REF_TRIES = 10
RATING_WAIT_S = 15.0


@dataclass(frozen=True)
class PendingRating:
    """A rating handed in and not yet written: a turn (buttons) or a message ref (reactions)."""

    rater_key: str
    value: int | None  # +1, -1, None: remove
    turn_id: int | None = None
    platform: str = ""
    ref: str = ""
    only_if: int | None = None  # a removal applies only when the stored value is this
    at: float = 0.0
    tries: int = 0  # write rounds it waited for its message's ref or its turn to settle

    @property
    def key(self) -> tuple[object, ...]:
        """Ratings with one key coalesce: the latest wins."""
        return (self.turn_id, self.platform, self.ref, self.rater_key)


@dataclass(frozen=True)
class Regeneration:
    """A turn opened again for a new answer: what the model is asked, and what it replaces."""

    turn_id: int
    conversation_id: str
    question: str
    previous_answer: str
    version: int  # the new answer's version


@dataclass(frozen=True)
class Forgotten:
    turns: int
    ratings: int


async def pseudonym_salt(store: ConversationStore) -> str:
    """This database's salt, made on first use (every process sharing it agrees)."""

    async def work(db: AsyncConnection) -> str:
        insert = store.insert(store_secrets).values(name=SALT_NAME, value=secrets.token_hex(32))
        await db.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
        query = sa.select(store_secrets.c.value).where(store_secrets.c.name == SALT_NAME)
        return str((await db.execute(query)).scalar_one())

    return await store.write(work, "read the pseudonym salt")


async def write_ratings(
    store: ConversationStore, batch: list[PendingRating]
) -> tuple[int, list[PendingRating]]:
    """Store `batch` in one transaction; returns how many changed a rating, and the reactions
    whose message is not known yet (up to REF_TRIES rounds) or whose turn has not settled (up to
    RATING_WAIT_S after it was given): the reply is on screen a moment before it is recorded. A
    rating for a turn or message that is unknown, deleted, interrupted, failed, still not
    answered after that wait, or by an opted-out rater is skipped and logged without its text."""

    counted: list[tuple[str | None, int | None]] = []  # (model, value) of each rating changed

    async def work(db: AsyncConnection) -> tuple[int, list[PendingRating]]:
        changed, later = 0, []
        counted.clear()
        for rating in batch:
            written = await _write_one(store, db, rating, counted)
            if written is None:
                later.append(rating)
            else:
                changed += written
        return changed, later

    result = await store.write(work, "save ratings")
    for model, value in counted:  # committed: now they count
        metrics.rated(model, value)
    return result


async def _write_one(
    store: ConversationStore,
    db: AsyncConnection,
    rating: PendingRating,
    counted: list[tuple[str | None, int | None]],
) -> int | None:
    """1 if it changed a rating, 0 if not, None: its message or its turn's answer is not stored
    yet (try again)."""
    turn_id = rating.turn_id
    if turn_id is None:
        query = sa.select(reply_messages.c.turn_id).where(
            reply_messages.c.platform == rating.platform, reply_messages.c.ref == rating.ref
        )
        turn_id = (await db.execute(query)).scalar()
        if turn_id is None and rating.tries < REF_TRIES:
            return None
        if turn_id is None:
            log.info("rating ignored: message %s on %s is not a stored reply", rating.ref, rating.platform)
            return 0
    row = (
        await db.execute(
            sa.select(turns.c.state, turns.c.version, turns.c.model, turns.c.model_file).where(
                turns.c.id == turn_id
            )
        )
    ).first()
    if row is not None and row.state == "pending" and time.time() - rating.at < RATING_WAIT_S:
        return None  # on screen, not settled yet (or being regenerated): its answer comes in a moment
    if row is None or row.state != "answered":
        log.info("rating ignored: turn %s is %s", turn_id, "not stored" if row is None else row.state)
        return 0
    opted_out = sa.select(feedback_opt_out.c.user_key).where(feedback_opt_out.c.user_key == rating.rater_key)
    if (await db.execute(opted_out)).first() is not None:
        return 0
    mine = sa.and_(
        ratings.c.turn_id == turn_id,
        ratings.c.version == row.version,
        ratings.c.rater_key == rating.rater_key,
    )
    if rating.value is None:
        if rating.only_if is not None:
            mine = sa.and_(mine, ratings.c.value == rating.only_if)
        removed = int((await db.execute(sa.delete(ratings).where(mine))).rowcount or 0)
        counted.extend([(row.model, None)] * removed)
        return removed
    now = rating.at or time.time()
    insert = store.insert(ratings).values(
        turn_id=turn_id,
        version=row.version,
        rater_key=rating.rater_key,
        value=rating.value,
        model=row.model,
        model_file=row.model_file,
        created_at=now,
        updated_at=now,
    )
    await db.execute(
        insert.on_conflict_do_update(
            index_elements=["turn_id", "version", "rater_key"],
            set_={"value": insert.excluded.value, "updated_at": insert.excluded.updated_at},
        )
    )
    counted.append((row.model, rating.value))
    return 1


async def conversation_of(store: ConversationStore, turn_id: int) -> str | None:
    async def work(db: AsyncConnection) -> str | None:
        query = sa.select(turns.c.conversation_id).where(turns.c.id == turn_id)
        return (await db.execute(query)).scalar()

    return await store.read(work, "read a turn")


async def begin_regeneration(
    store: ConversationStore, turn_id: int, presser_key: str, *, keep_old: bool, shared: bool
) -> Regeneration:
    """Open answered turn `turn_id` again (pending, the next version), keeping its answer in
    `answer_versions` when `keep_old`. Only the newest turn of its conversation (the ones after
    it were answered from this answer); in a conversation that is not `shared` (a person's own in a
    channel), only by someone who asked in it, so nobody regenerates another's. Atomic, so two
    presses of 🔁 open it once."""

    async def work(db: AsyncConnection) -> Regeneration:
        row = (await db.execute(sa.select(turns).where(turns.c.id == turn_id))).first()
        if row is None:
            raise CannotRegenerate("That answer is no longer stored, so it can't be regenerated.")
        if row.state == "pending":
            raise CannotRegenerate("That answer is still being written; wait for it to finish.")
        if row.state != "answered":
            raise CannotRegenerate("Only a complete answer can be regenerated; ask again instead.")
        later = sa.select(turns.c.id).where(
            turns.c.conversation_id == row.conversation_id, turns.c.id > turn_id, turns.c.state != "failed"
        )
        if (await db.execute(later.limit(1))).first() is not None:
            raise CannotRegenerate("Only the latest answer here can be regenerated.")
        if not shared and row.user_key not in (None, presser_key):  # None: stored before askers were
            took_part = sa.select(turns.c.id).where(
                turns.c.conversation_id == row.conversation_id, turns.c.user_key == presser_key
            )
            if (await db.execute(took_part.limit(1))).first() is None:
                raise CannotRegenerate("Only the person who asked can regenerate this answer.")
        now = time.time()
        opened = await db.execute(
            sa.update(turns)
            .where(turns.c.id == turn_id, turns.c.state == "answered", turns.c.version == row.version)
            .values(
                state="pending", owner=process_owner(), version=row.version + 1, notice_due=0, updated_at=now
            )
        )
        if not opened.rowcount:
            raise CannotRegenerate("That answer is being regenerated already.")
        if keep_old:
            await db.execute(
                sa.insert(answer_versions).values(
                    turn_id=turn_id,
                    version=row.version,
                    answer=row.answer,
                    model=row.model,
                    model_file=row.model_file,
                    created_at=row.updated_at,
                    replaced_at=now,
                )
            )
        return Regeneration(turn_id, row.conversation_id, row.question, row.answer, row.version + 1)

    return await store.write(work, "regenerate an answer")


async def undo_regeneration(store: ConversationStore, regeneration: Regeneration) -> None:
    """The new answer failed before anything was shown: the old one is the turn's answer again."""
    old_version = regeneration.version - 1

    async def work(db: AsyncConnection) -> None:
        kept = sa.and_(
            answer_versions.c.turn_id == regeneration.turn_id, answer_versions.c.version == old_version
        )
        old = (await db.execute(sa.select(answer_versions).where(kept))).first()
        values: dict[str, object] = {
            "state": "answered",
            "version": old_version,
            "answer": regeneration.previous_answer,
        }
        if old is not None:
            values |= {"model": old.model, "model_file": old.model_file}
            await db.execute(sa.delete(answer_versions).where(kept))
        await db.execute(
            sa.update(turns)
            .where(turns.c.id == regeneration.turn_id, turns.c.version == regeneration.version)
            .values(values)
        )

    await store.write(work, "restore an answer")


async def opted_out_keys(store: ConversationStore) -> set[str]:
    async def work(db: AsyncConnection) -> set[str]:
        return set((await db.execute(sa.select(feedback_opt_out.c.user_key))).scalars())

    return await store.read(work, "read the feedback opt-outs")


async def set_opt_out(store: ConversationStore, user_key: str, opted_out: bool) -> None:
    """/feedback off (True) or on: off also deletes the ratings that person gave."""

    async def work(db: AsyncConnection) -> None:
        mine = feedback_opt_out.c.user_key == user_key
        if not opted_out:
            await db.execute(sa.delete(feedback_opt_out).where(mine))
            return
        insert = store.insert(feedback_opt_out).values(user_key=user_key, since=time.time())
        await db.execute(insert.on_conflict_do_nothing(index_elements=["user_key"]))
        await db.execute(sa.delete(ratings).where(ratings.c.rater_key == user_key))

    await store.write(work, "save your feedback choice")


async def forget_user(store: ConversationStore, user_key: str, own_conversation: str | None) -> Forgotten:
    """Delete what is stored about one person: the turns they asked (also in shared
    conversations), their ratings, and their own conversation's settings. Their opt-out, if any,
    stays: deleting it would start collecting again."""

    async def work(db: AsyncConnection) -> Forgotten:
        theirs: sa.ColumnElement[bool] = turns.c.user_key == user_key
        if own_conversation is not None:  # also turns stored before askers were recorded (schema < 4)
            theirs = sa.or_(theirs, turns.c.conversation_id == own_conversation)
        removed_ratings = (
            await db.execute(sa.delete(ratings).where(ratings.c.rater_key == user_key))
        ).rowcount
        removed_turns = len(await delete_turns(db, theirs))
        if own_conversation is not None:
            # a Telegram private chat keeps its choices under its own scope ("scope:" + the chat)
            keys = (own_conversation, f"scope:{own_conversation}")
            await db.execute(sa.delete(model_choice).where(model_choice.c.key.in_(keys)))
            await db.execute(sa.delete(persona_choice).where(persona_choice.c.key.in_(keys)))
            await db.execute(
                sa.delete(conversation_options).where(
                    conversation_options.c.conversation_id == own_conversation
                )
            )
        return Forgotten(removed_turns, int(removed_ratings or 0))

    return await store.write(work, "forget what is stored about you")
