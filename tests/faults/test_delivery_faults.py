"""Delivery faults (issue 21): what users see when a reply is cut at the edges.

The real bot (discord.py / python-telegram-bot) talks to the fake platforms over loopback, on a
scripted ChatService (the reply text is known in advance) with the real history store. Each test
asserts what the platform shows afterwards and what the store says about the turn:

- a restart's "interrupted" note keeps a nearly full message's own text;
- a turn marked interrupted after start-up (another process's lease ran out) gets its note
  without a restart;
- a reply generated but not yet on screen when a shutdown cuts it gets the shutdown note, and is
  not answered (not in the model's context); one whose note could not be shown is marked by the
  next start;
- a locked store never holds up what users see;
- after a shutdown every reply is final or marked, also when the platform was gone meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.fakes.discord import FakeDiscord
from bench.fakes.telegram import FakeBotAPI, utf16_len
from bots import inflight
from bots.discord_bot import DiscordSettings, run_discord
from bots.discord_bot.client import LorabotClient
from bots.discord_bot.sink import DISCORD_LIMIT
from bots.discord_bot.sink import INTERRUPTED as DISCORD_INTERRUPTED
from bots.discord_bot.sink import RESTARTED as DISCORD_RESTARTED
from bots.inflight import with_restart_note
from bots.telegram_bot import TelegramSettings, run_telegram
from bots.telegram_bot.sink import INTERRUPTED as TELEGRAM_INTERRUPTED
from bots.telegram_bot.sink import RESTARTED as TELEGRAM_RESTARTED
from core import history
from core.history import ConversationStore
from core.service import ChatService
from support.engines import make_service
from support.waiting import until

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning")

ALICE = 111
GONE_OWNER = "gone-host:4242:1:0123456789ab"  # a process on another host whose lease ran out


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "history.sqlite3"


def turns(tmp_path: Path) -> list[dict]:
    with contextlib.closing(sqlite3.connect(db_path(tmp_path))) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM turns ORDER BY id")]


async def mark_stopped_processes(tmp_path: Path) -> None:
    """What another bot process's periodic check does when a process's lease ran out."""
    store = await ConversationStore.open(db_path(tmp_path))
    try:
        await store.recover()
    finally:
        await store.close()


# -- Discord --------------------------------------------------------------------------------
@dataclass
class DiscordBot:
    service: ChatService
    client: LorabotClient
    task: asyncio.Task

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 30)
        await self.service.close(drain_timeout_s=1)


async def start_discord(fake: FakeDiscord, tmp_path: Path, reply, *, grace_s=0.0, **core) -> DiscordBot:
    service = make_service(tmp_path, reply, **core)
    await service.start()
    settings = DiscordSettings(
        _env_file=None, token=fake.token, api_base_url=fake.api_base_url, gateway_url=fake.gateway_url,
        edit_interval_s=0.05, shutdown_grace_s=grace_s,
    )  # fmt: skip
    client = LorabotClient(service, settings, guild_ready_timeout=0.05)
    task = asyncio.create_task(run_discord(service, settings, client=client))
    await asyncio.wait_for(client.wait_until_ready(), 10)
    return DiscordBot(service, client, task)


@contextlib.asynccontextmanager
async def discord_bot(fake: FakeDiscord, tmp_path: Path, reply, **options) -> AsyncIterator[DiscordBot]:
    bot = await start_discord(fake, tmp_path, reply, **options)
    try:
        yield bot
    finally:
        await bot.stop()


@pytest.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def collect_often(monkeypatch):
    """Collect interrupted turns every 0.1 s instead of every 15 s (the store's lease / 4)."""
    monkeypatch.setattr(inflight, "COLLECT_EVERY_S", 0.1)


async def test_a_nearly_full_message_keeps_its_text_when_marked_after_a_restart(discord_fake, tmp_path):
    """A reply of two messages whose last one holds 1,989 characters, left by a killed process:
    the restart's note replaces only the tail it needs (before: the text was split again at a
    smaller limit and only the last piece kept, 76 characters)."""
    fake = discord_fake
    first, last = ("alpha " * 330).strip(), ("beta " * 398).strip()
    async with discord_bot(fake, tmp_path, first + "\n\n" + last) as bot:
        question = await fake.user_message("two messages please", mention_bot=True)
        await fake.wait_until(lambda: [m["content"] for m in fake.bot_messages()] == [first, last])
        await bot.client.wait_idle()
    messages = fake.bot_messages()
    [turn] = turns(tmp_path)
    refs = [f"{m['channel_id']}:{m['id']}" for m in messages]
    assert turn["state"] == "answered" and json.loads(turn["handles"]) == refs
    # what the store keeps for a restart is the last message's own text, not the whole reply
    assert turn["shown"].startswith("beta") and last.startswith(turn["shown"])

    # the process is killed while the last message shows all of it: its turn is a leftover
    with contextlib.closing(sqlite3.connect(db_path(tmp_path))) as db, db:
        db.execute("UPDATE turns SET state = 'pending', owner = ?, shown = ?", (GONE_OWNER, last))
    async with discord_bot(fake, tmp_path, "unused"):
        await fake.wait_until(lambda: fake.bot_messages()[-1]["content"].endswith(DISCORD_RESTARTED))
    marked = fake.bot_messages()[-1]["content"]
    assert fake.bot_messages()[0]["content"] == first  # the first message is left alone
    kept = marked.removesuffix("\n\n" + DISCORD_RESTARTED)
    assert len(marked) <= DISCORD_LIMIT and kept.endswith("…")
    assert last.startswith(kept.removesuffix("…"))
    assert len(kept) >= DISCORD_LIMIT - len(DISCORD_RESTARTED) - 2 - 45, len(kept)  # only the note's room
    assert [t["state"] for t in turns(tmp_path)] == ["interrupted"]
    assert fake.replies_to(question["id"])[0]["id"] == messages[0]["id"]


@pytest.mark.parametrize(
    ("shown", "limit", "length"),
    [
        ("😀" * 2040, 4096, utf16_len),  # Telegram counts UTF-16 units: 4080 of 4096 used
        ("```python\n" + "x = 1\n" * 330 + "```", 2000, len),  # a cut inside a code fence
        ("word " * 790, 2000, len),  # a row of an older version (the whole reply): its last message
    ],
)
def test_the_restart_note_fits_the_message_and_keeps_its_text(shown, limit, length):
    marked = with_restart_note(shown, "[interrupted: restarted]", limit, length)
    kept = marked.removesuffix("\n\n[interrupted: restarted]")
    assert length(marked) <= limit and kept != marked
    assert length(kept) >= limit - length("[interrupted: restarted]") - 2 - 60
    assert kept.count("```") % 2 == 0  # the note is never inside a code block


async def test_a_turn_marked_after_start_up_gets_its_note_without_a_restart(
    discord_fake, tmp_path, collect_often
):
    """In a new pid namespace (a container restart) the old process's turns are marked only once
    its lease runs out, about a minute after the new process started: the running bot collects
    them then (before: only at start-up, so nobody did until the next restart)."""
    fake = discord_fake
    async with discord_bot(fake, tmp_path, "a half-written answer") as bot:
        question = await fake.user_message("hello", mention_bot=True)
        await fake.wait_until(lambda: fake.replies_to(question["id"]))
        await bot.client.wait_idle()
        [message] = fake.bot_messages()
        # the old process's leftover, written as it leaves one (its reply on screen, recorded)
        now = time.time()
        with contextlib.closing(sqlite3.connect(db_path(tmp_path))) as db, db:
            db.execute(
                "INSERT INTO turns (conversation_id, question, state, owner, platform, handles, shown,"
                " created_at, updated_at) VALUES ('discord:old', 'q', 'pending', ?, 'discord', ?, ?, ?, ?)",
                (
                    GONE_OWNER,
                    json.dumps([f"{message['channel_id']}:{message['id']}"]),
                    message["content"],
                    now,
                    now,
                ),
            )
        await mark_stopped_processes(tmp_path)  # after this bot's start-up
        await fake.wait_until(lambda: fake.bot_messages()[0]["content"].endswith(DISCORD_RESTARTED))
        assert fake.bot_messages()[0]["content"] == "a half-written answer\n\n" + DISCORD_RESTARTED
        assert not bot.task.done()  # the same process, no restart


# -- Telegram -------------------------------------------------------------------------------
@pytest.fixture
async def telegram_fake() -> AsyncIterator[FakeBotAPI]:
    fake = FakeBotAPI()
    await fake.start()
    fake.alice = fake.add_user(ALICE, "Alice")
    fake.private_chat(fake.alice)
    yield fake
    await fake.stop()


def telegram_settings(fake: FakeBotAPI, **overrides) -> TelegramSettings:
    values = {
        "token": fake.token, "api_base_url": fake.base_url, "file_base_url": fake.base_file_url,
        "edit_interval_s": 0.1, "group_edit_interval_s": 0.1, "poll_timeout_s": 1, "shutdown_grace_s": 0,
        "drafts": False,  # a private reply is a message edited as it grows (drafts: their own tests)
        "_env_file": None,
    }  # fmt: skip
    values.update(overrides)
    return TelegramSettings(**values)


@dataclass
class TelegramBot:
    service: ChatService
    task: asyncio.Task

    async def stop(self) -> float:
        """SIGTERM, as the CLI handles it; returns the seconds it took."""
        started = time.monotonic()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 30)
        took = time.monotonic() - started
        await self.service.close(drain_timeout_s=1)
        return took


async def start_telegram(fake: FakeBotAPI, tmp_path: Path, reply, settings=None, **core) -> TelegramBot:
    service = make_service(tmp_path, reply, **core)
    await service.start()
    before = len(fake.calls_of("getUpdates"))
    task = asyncio.create_task(run_telegram(service, telegram_settings(fake, **(settings or {}))))
    await fake.wait_for(lambda: len(fake.calls_of("getUpdates")) > before or task.done())
    return TelegramBot(service, task)


def failed_edits(fake: FakeBotAPI, status: int) -> list:
    return [call for call in fake.calls_of("editMessageText", ok_only=False) if call.status == status]


LONG_SILENCE = {"edit_interval_s": 30.0}  # no in-between edit: the first edit is the final text


async def test_a_finished_reply_cut_by_shutdown_before_it_is_on_screen_gets_the_note(telegram_fake, tmp_path):
    """The reply is generated, but its final edit fails (502, retried 1 s, 2 s later) when SIGTERM
    comes: the note is shown within the shutdown's bound, and the turn is interrupted, not answered
    (before: the first words stayed on screen without a note, and the turn went into the model's
    context as answered)."""
    fake, text = telegram_fake, ("tok " * 30).strip()
    bot = await start_telegram(fake, tmp_path, text, settings=LONG_SILENCE, token_delay_s=0.01)
    fake.fail_next("editMessageText", 502, times=2)
    fake.send_text(fake.alice, fake.chats[ALICE], "answer please")
    await fake.wait_for(lambda: failed_edits(fake, 502))
    assert fake.bot_texts(ALICE) != [text]  # generated, not on screen
    took = await bot.stop()
    assert fake.bot_texts(ALICE) == [text + "\n\n" + TELEGRAM_INTERRUPTED]
    assert took < 0 + 5 + 2  # grace 0 s + the note's bound (5 s) + slack
    assert [t["state"] for t in turns(tmp_path)] == ["interrupted"]


async def test_an_undelivered_reply_is_marked_by_the_next_start(telegram_fake, tmp_path):
    """Flood control (429, 60 s) holds the final text when SIGTERM comes: the shutdown note cannot
    be shown either, so the turn stays pending and the next start marks the message, like a
    killed process's (before: the turn was answered; nothing ever marked the stale words)."""
    fake, text = telegram_fake, ("tok " * 30).strip()
    bot = await start_telegram(fake, tmp_path, text, settings=LONG_SILENCE, token_delay_s=0.01)
    fake.rate_limit("editMessageText", retry_after=60)
    fake.send_text(fake.alice, fake.chats[ALICE], "answer please")
    await fake.wait_for(lambda: failed_edits(fake, 429))
    await bot.stop()
    [stale] = fake.bot_texts(ALICE)
    assert stale != text and not stale.endswith(TELEGRAM_INTERRUPTED)
    assert [t["state"] for t in turns(tmp_path)] == ["pending"]

    restarted = await start_telegram(fake, tmp_path, "unused")
    try:
        await fake.wait_for(lambda: fake.bot_texts(ALICE)[0].endswith(TELEGRAM_RESTARTED))
    finally:
        await restarted.stop()
    assert fake.bot_texts(ALICE) == [stale + "\n\n" + TELEGRAM_RESTARTED]
    assert [t["state"] for t in turns(tmp_path)] == ["interrupted"]


async def test_an_undelivered_reply_shown_only_as_a_draft_gets_its_note_as_a_message(telegram_fake, tmp_path):
    """Drafts (issue 28): flood control (429, 60 s) holds the final sendMessage when SIGTERM
    comes, so no message exists and the note cannot be sent either. The turn stays pending with
    the draft's ref; the next start sends the text the user saw with the note as a new message."""
    fake, text = telegram_fake, ("tok " * 30).strip()
    bot = await start_telegram(fake, tmp_path, text, settings={"drafts": True}, token_delay_s=0.01)
    fake.rate_limit("sendMessage", retry_after=60)
    question = fake.send_text(fake.alice, fake.chats[ALICE], "answer please")
    await fake.wait_for(lambda: fake.calls_of("sendMessage", ok_only=False))
    seen = [d["text"] for d in fake.draft_log if d["text"]]
    await bot.stop()
    assert fake.bot_messages(ALICE) == [] and seen, "only drafts showed it"
    assert [t["state"] for t in turns(tmp_path)] == ["pending"]
    assert ":draft:" in json.loads(turns(tmp_path)[0]["handles"])[0]

    restarted = await start_telegram(fake, tmp_path, "unused")
    try:
        await fake.wait_for(lambda: fake.bot_texts(ALICE))
    finally:
        await restarted.stop()
    [message] = fake.bot_messages(ALICE)
    assert message["text"].endswith(TELEGRAM_RESTARTED) and message["text"].startswith("tok")
    assert message["reply_to_message"]["message_id"] == question["message_id"]
    assert [t["state"] for t in turns(tmp_path)] == ["interrupted"]


async def test_edits_reach_the_platform_while_the_store_is_locked(telegram_fake, tmp_path, monkeypatch):
    """Another connection holds the database's write lock from the moment generation starts
    until the test has seen the whole reply: the reply streams and ends on screen on the view's
    schedule while the delivery records wait for the lock (before: each record held the delivery
    until the store gave up, the busy timeout, 30 s here); once the lock is gone the store has it."""
    monkeypatch.setattr(history, "BUSY_TIMEOUT_S", 30.0)
    fake, text = telegram_fake, ("word " * 60).strip()
    lock: list[sqlite3.Connection] = []

    def locked_reply(request) -> str:  # runs on the compute thread when generation starts
        other = sqlite3.connect(db_path(tmp_path), isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        lock.append(other)
        return text

    bot = await start_telegram(fake, tmp_path, locked_reply, token_delay_s=0.02)
    try:
        fake.send_text(fake.alice, fake.chats[ALICE], "answer please")
        await fake.wait_for(lambda: fake.bot_texts(ALICE) == [text], timeout=15)
        assert lock and lock[0].in_transaction  # still locked: nothing was stored meanwhile
        assert [t["state"] for t in turns(tmp_path)] == ["pending"]
        shown = [call.params["text"] for call in fake.calls_of("editMessageText")]
        assert len(shown) >= 2 and shown[-1] == text  # it grew on screen, then the final text
        assert all(len(a) < len(b) for a, b in itertools.pairwise(shown))
    finally:
        for other in lock:
            other.execute("ROLLBACK")
            other.close()
    await until(lambda: [t["state"] for t in turns(tmp_path)] == ["answered"])
    [turn] = turns(tmp_path)
    assert turn["answer"] == text and turn["platform"] == "telegram" and json.loads(turn["handles"])
    await bot.stop()


# -- shutdown: what users see afterwards ------------------------------------------------------
async def test_shutdown_leaves_every_reply_final_or_marked(discord_fake, tmp_path):
    """SIGTERM with one reply finished, one streaming and one waiting in line (parallel=1): each
    ends either with its whole text or with the interruption note, and the store agrees."""
    fake = discord_fake
    answers = {"short": "done quickly", "long": "long " * 300}  # with the note, still one message
    bot = await start_discord(
        fake, tmp_path, lambda request: answers[request.messages[-1]["content"]], grace_s=0.5,
        token_delay_s=0.02, parallel=1,
    )  # fmt: skip
    finished = await fake.user_message("short", mention_bot=True, user_id=501)
    await fake.wait_until(lambda: fake.replies_to(finished["id"]))
    await bot.client.wait_idle()
    streaming = await fake.user_message("long", mention_bot=True, user_id=502)
    await fake.wait_until(lambda: any("long" in m["content"] for m in fake.replies_to(streaming["id"])))
    waiting = await fake.user_message("short", mention_bot=True, user_id=503)
    await fake.wait_until(
        lambda: any("Waiting in line" in m["content"] for m in fake.replies_to(waiting["id"]))
    )
    await bot.stop()

    [[done], [cut], [queued]] = [fake.replies_to(q["id"]) for q in (finished, streaming, waiting)]
    assert done["content"] == "done quickly"
    assert cut["content"].startswith("long") and cut["content"].endswith(DISCORD_INTERRUPTED)
    assert queued["content"] == DISCORD_INTERRUPTED
    assert [t["state"] for t in turns(tmp_path)] == ["answered", "interrupted", "interrupted"]


async def test_shutdown_with_discord_gone_then_a_restart_leaves_the_reply_marked(discord_fake, tmp_path):
    """Discord becomes unreachable mid-reply, then SIGTERM: the shutdown is bounded, and as the
    note could not be shown the turn stays pending; once Discord is back the next start marks
    the message (before: the turn was settled interrupted without a note, and the half reply
    stayed on screen unmarked for good)."""
    fake = discord_fake
    bot = await start_discord(fake, tmp_path, "slow " * 400, token_delay_s=0.02, grace_s=1.0)
    question = await fake.user_message("go", mention_bot=True)
    await fake.wait_until(lambda: fake.replies_to(question["id"]))
    await fake.close()  # Discord unreachable from now on
    started = time.monotonic()
    await bot.stop()
    assert time.monotonic() - started < 1 + 5 + 5 + 3 + 1  # grace + note + logging out + slack + store
    assert bot.client.is_closed()
    [partial] = [m["content"] for m in fake.bot_messages()]
    assert partial.startswith("slow") and not partial.endswith(DISCORD_INTERRUPTED)
    assert [t["state"] for t in turns(tmp_path)] == ["pending"]

    await fake.start()  # Discord is back
    async with discord_bot(fake, tmp_path, "unused"):
        await fake.wait_until(lambda: fake.bot_messages()[0]["content"].endswith(DISCORD_RESTARTED))
    assert fake.bot_messages()[0]["content"] == partial.rstrip() + "\n\n" + DISCORD_RESTARTED
    assert [t["state"] for t in turns(tmp_path)] == ["interrupted"]
