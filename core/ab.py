"""Live A/B of a candidate model against a served name, decided in the shared store.

A test (core/schema.py v5, `ab_tests`) says: of the conversations whose model would be NAME by
default (a scope default or the global default naming it), send `share` to CANDIDATE. Each
conversation's arm is drawn at random the first time any process routes it and stored with
insert-or-ignore (`ab_arms`), then read back: the first writer wins, so every process on one
database — shards, replicas, restarts — routes a conversation the same way for the whole test.
A conversation's own `/model` choice is never routed (ChatService.current_model checks it first).

Arms are keyed by an HMAC of the conversation id with the database's pseudonym salt (the one
core.feedback.Pseudonyms uses), so the table holds no platform id and /forget has nothing to add.

Processes read the running test at most `CACHE_S` old (`AbRouter`), so a start, a share change or a
stop reaches every running bot within about a second, without a restart. Changing the share keeps
the arms already drawn; a new test (after a stop) draws every conversation again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from core.errors import ChatError
from core.feedback_store import SALT_NAME, pseudonym_salt
from core.history import ConversationStore
from core.schema import ab_arms, ab_tests, store_secrets

log = logging.getLogger(__name__)

Arm = Literal["control", "candidate"]
CACHE_S = 1.0  # how old a process's view of the running test may be (the contract: ≤ 2 s)
ARM_CACHE = 10_000  # conversations whose arm a process remembers (arms never change within a test)


class AbError(ChatError):
    """A test that cannot be started or changed as asked (the text says why)."""


@dataclass(frozen=True)
class AbTest:
    id: int
    name: str
    candidate: str
    share: float
    started_at: float
    changed_at: float
    stopped_at: float | None

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def model_of(self, arm: Arm) -> str:
        return self.candidate if arm == "candidate" else self.name

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "candidate": self.candidate,
            "share": self.share,
            "started_at": self.started_at,
            "changed_at": self.changed_at,
            "stopped_at": self.stopped_at,
            "running": self.running,
        }


def check_share(share: float) -> float:
    """0 < share < 1 (NaN is refused too): 0 or 1 is no A/B (stop, or promote)."""
    if not 0 < share < 1:  # NaN fails this too
        raise AbError(f"the share must be between 0 and 1 (exclusive), not {share!r}")
    return float(share)


def conversation_key(salt: str, conversation_id: str) -> str:
    """The stored stand-in for a conversation id (domain-separated from the users' pseudonyms, so
    a private conversation's key never equals its person's rater key)."""
    return hmac.new(salt.encode(), f"ab-conversation:{conversation_id}".encode(), hashlib.sha256).hexdigest()[
        :32
    ]


async def salt(store: ConversationStore) -> str:
    """The database's pseudonym salt: read (the usual case), else made (core.feedback_store)."""

    async def work(db: AsyncConnection) -> str | None:
        query = sa.select(store_secrets.c.value).where(store_secrets.c.name == SALT_NAME)
        return (await db.execute(query)).scalar()

    return await store.read(work, "read the pseudonym salt") or await pseudonym_salt(store)


def _test(row: sa.Row[Any] | None) -> AbTest | None:
    if row is None:
        return None
    m = row._mapping
    return AbTest(
        id=int(m["id"]),
        name=str(m["name"]),
        candidate=str(m["candidate"]),
        share=float(m["share"]),
        started_at=float(m["started_at"]),
        changed_at=float(m["changed_at"]),
        stopped_at=None if m["stopped_at"] is None else float(m["stopped_at"]),
    )


_RUNNING = sa.select(ab_tests).where(ab_tests.c.running == 1)
_LATEST = sa.select(ab_tests).order_by(ab_tests.c.id.desc()).limit(1)


async def running_test(store: ConversationStore) -> AbTest | None:
    """The test running now, if any."""

    async def work(db: AsyncConnection) -> AbTest | None:
        return _test((await db.execute(_RUNNING)).first())

    return await store.read(work, "read the A/B test")


async def latest_test(store: ConversationStore) -> AbTest | None:
    """The running test, else the one stopped last (what the report compares)."""

    async def work(db: AsyncConnection) -> AbTest | None:
        return _test((await db.execute(_LATEST)).first())

    return await store.read(work, "read the A/B test")


async def start(store: ConversationStore, name: str, candidate: str, share: float) -> tuple[AbTest, bool]:
    """Start a test of CANDIDATE against NAME, or change the share of the one running with the
    same names; returns (the test, whether it is new). A running test of other models is
    `AbError` (stop it first). Starting a new test deletes the arms of earlier ones (their
    report is replaced by the new test's). Checking that the names are registered is the caller's
    job (the store does not know the registry)."""
    share = check_share(share)
    if name == candidate:
        raise AbError(f"the candidate must be another model than {name}")

    async def work(db: AsyncConnection) -> tuple[AbTest, bool]:
        now = time.time()
        current = _test((await db.execute(_RUNNING)).first())
        if current is not None:
            if (current.name, current.candidate) != (name, candidate):
                raise AbError(
                    f"an A/B test of {current.candidate} against {current.name} is running; "
                    "stop it first (lorabot models ab --stop)"
                )
            await db.execute(
                sa.update(ab_tests).where(ab_tests.c.id == current.id).values(share=share, changed_at=now)
            )
            changed = _test(
                (await db.execute(sa.select(ab_tests).where(ab_tests.c.id == current.id))).first()
            )
            assert changed is not None
            return changed, False
        await db.execute(sa.delete(ab_arms))  # earlier tests' arms: a new test draws afresh
        inserted = await db.execute(
            sa.insert(ab_tests)
            .values(name=name, candidate=candidate, share=share, running=1, started_at=now, changed_at=now)
            .returning(ab_tests.c.id)
        )
        test_id = inserted.scalar_one()
        new = _test((await db.execute(sa.select(ab_tests).where(ab_tests.c.id == test_id))).first())
        assert new is not None
        return new, True

    return await store.write(work, "start the A/B test")


async def stop(store: ConversationStore) -> AbTest | None:
    """Stop the running test (None when none runs). Its arms are kept for the report."""

    async def work(db: AsyncConnection) -> AbTest | None:
        current = _test((await db.execute(_RUNNING)).first())
        if current is None:
            return None
        now = time.time()
        await db.execute(
            sa.update(ab_tests).where(ab_tests.c.id == current.id).values(running=None, stopped_at=now)
        )
        return dataclasses.replace(current, stopped_at=now)

    return await store.write(work, "stop the A/B test")


async def assign_arm(store: ConversationStore, test: AbTest, key: str, draw: Callable[[], float]) -> Arm:
    """The arm of conversation `key` in `test`: drawn with `draw()` < share → candidate, stored
    unless another process stored one first, and the stored one returned (one transaction)."""
    arm: Arm = "candidate" if draw() < test.share else "control"

    async def work(db: AsyncConnection) -> Arm:
        insert = store.insert(ab_arms).values(
            test_id=test.id, conversation_key=key, arm=arm, assigned_at=time.time()
        )
        await db.execute(insert.on_conflict_do_nothing(index_elements=["test_id", "conversation_key"]))
        query = sa.select(ab_arms.c.arm).where(
            ab_arms.c.test_id == test.id, ab_arms.c.conversation_key == key
        )
        stored = (await db.execute(query)).scalar_one()
        return "candidate" if stored == "candidate" else "control"

    return await store.write(work, "assign the A/B arm")


async def arm_of(store: ConversationStore, conversation_id: str, test: AbTest | None = None) -> Arm | None:
    """The stored arm of a conversation in `test` (default: the latest test), without drawing one
    (None: not routed yet, or no test)."""
    test = test or await latest_test(store)
    if test is None:
        return None
    key = conversation_key(await salt(store), conversation_id)

    async def work(db: AsyncConnection) -> Arm | None:
        query = sa.select(ab_arms.c.arm).where(
            ab_arms.c.test_id == test.id, ab_arms.c.conversation_key == key
        )
        stored = (await db.execute(query)).scalar()
        return None if stored is None else ("candidate" if stored == "candidate" else "control")

    return await store.read(work, "read the A/B arm")


async def arm_counts(store: ConversationStore, test: AbTest) -> dict[Arm, int]:
    """Conversations routed so far in each arm."""

    async def work(db: AsyncConnection) -> dict[Arm, int]:
        query = (
            sa.select(ab_arms.c.arm, sa.func.count())
            .where(ab_arms.c.test_id == test.id)
            .group_by(ab_arms.c.arm)
        )
        counts: dict[Arm, int] = {"control": 0, "candidate": 0}
        for arm, count in (await db.execute(query)).all():
            counts["candidate" if arm == "candidate" else "control"] = int(count)
        return counts

    return await store.read(work, "read the A/B arms")


async def arms_by_key(store: ConversationStore, test: AbTest) -> dict[str, Arm]:
    """Every routed conversation's key → arm (the report joins ratings to arms with it)."""

    async def work(db: AsyncConnection) -> dict[str, Arm]:
        query = sa.select(ab_arms.c.conversation_key, ab_arms.c.arm).where(ab_arms.c.test_id == test.id)
        return {
            str(key): ("candidate" if arm == "candidate" else "control")
            for key, arm in (await db.execute(query)).all()
        }

    return await store.read(work, "read the A/B arms")


class AbRouter:
    """One process's view of the A/B: the running test (re-read when older than `cache_s`) and the
    arms it has seen (they never change within a test). `ChatService.current_model` asks it."""

    def __init__(
        self, store: ConversationStore, *, cache_s: float = CACHE_S, draw: Callable[[], float] | None = None
    ) -> None:
        self.store = store
        self.cache_s = cache_s
        self.draw = draw or random.random  # [0, 1): below the share → candidate
        self._test: AbTest | None = None
        self._read_at = float("-inf")
        self._salt: str | None = None
        self._arms: OrderedDict[tuple[int, str], Arm] = OrderedDict()
        self._missing_warned: set[int] = set()

    async def test(self) -> AbTest | None:
        """The running test, at most `cache_s` old."""
        now = time.monotonic()
        if now - self._read_at >= self.cache_s:
            self._test = await running_test(self.store)
            self._read_at = now
        return self._test

    async def route(self, conversation_id: str, name: str, registered: Callable[[str], bool]) -> str:
        """The model that answers a conversation whose default is `name`: the candidate when a
        running test splits `name` and this conversation's arm is the candidate's (and the
        candidate is still registered), else `name`."""
        test = await self.test()
        if test is None or test.name != name:
            return name
        if not registered(test.candidate):
            if test.id not in self._missing_warned:
                self._missing_warned.add(test.id)
                log.warning(
                    "A/B test %d: candidate %s is not registered; serving %s", test.id, test.candidate, name
                )
            return name
        arm = await self.arm(test, conversation_id)
        return test.model_of(arm)

    async def arm(self, test: AbTest, conversation_id: str) -> Arm:
        if self._salt is None:
            self._salt = await salt(self.store)
        key = conversation_key(self._salt, conversation_id)
        cached = self._arms.get((test.id, key))
        if cached is not None:
            self._arms.move_to_end((test.id, key))
            return cached
        arm = await assign_arm(self.store, test, key, self.draw)
        self._arms[(test.id, key)] = arm
        while len(self._arms) > ARM_CACHE:
            self._arms.popitem(last=False)
        return arm
