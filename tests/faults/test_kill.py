"""kill -9 of the real bot process mid-reply, then a restart, against the fake Telegram.

The bot runs as `python -m lorabot telegram` on the embedded model, exactly as an operator
starts it (the CLI configures logging). Afterwards: the half-written reply is marked on the
platform, the question is in history as interrupted (not in the model's context), the next
message is answered, SIGTERM ends the process cleanly, and the log has the start-up line and
one line per reply but never the token.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from bench.fakes.telegram import THINKING, FakeBotAPI
from bots.telegram_bot.sink import RESTARTED

pytestmark = pytest.mark.slow
ALICE = 4242


def bot_env(fake: FakeBotAPI, data_dir: Path, drafts: bool = False) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LORABOT_", "TELEGRAM_", "DISCORD_"))
    }
    env.update(
        TELEGRAM_TOKEN=fake.token,
        TELEGRAM_API_BASE_URL=fake.base_url,
        TELEGRAM_FILE_BASE_URL=fake.base_file_url,
        TELEGRAM_EDIT_INTERVAL_S="0.5",
        TELEGRAM_SHUTDOWN_GRACE_S="2",
        TELEGRAM_DRAFTS="true" if drafts else "false",  # off: the reply is a message edited as it grows
        LORABOT_DATA_DIR=str(data_dir),
        LORABOT_MAX_NEW_TOKENS="400",
        LORABOT_THREADS="1",  # a slower reply (~400 tokens, seconds): there is time to kill it mid-way
        LORABOT_TEMPERATURE="0",
        LORABOT_LOG_LEVEL="DEBUG",
    )
    return env


async def start_bot(
    fake: FakeBotAPI, data_dir: Path, log_path: Path, *, drafts: bool = False
) -> asyncio.subprocess.Process:
    log = log_path.open("ab")  # the child owns it
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lorabot", "telegram",
        env=bot_env(fake, data_dir, drafts), stdout=log, stderr=log, cwd=data_dir.parent,
    )  # fmt: skip
    log.close()
    return process


def turn_states(data_dir: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data_dir / "history.sqlite3") as db:
        return db.execute("SELECT question, state FROM turns ORDER BY id").fetchall()


async def test_kill_9_mid_reply_then_restart(tmp_path):
    fake = FakeBotAPI()
    await fake.start()
    data_dir, log_path = tmp_path / "data", tmp_path / "bot.log"
    data_dir.mkdir()
    process = await start_bot(fake, data_dir, log_path)
    try:
        user = fake.add_user(ALICE, "Alice")
        chat = fake.private_chat(user)
        await fake.wait_for(lambda: fake.calls_of("getUpdates"), timeout=60)
        fake.send_text(user, chat, "Count from 1 to 500, separated by commas.")

        # mid-reply: a message with model text on screen, and its place recorded (first send)
        def streaming() -> bool:
            texts = fake.bot_texts(ALICE)
            return (
                bool(texts) and not texts[0].startswith("⏳") and len(fake.calls_of("editMessageText")) >= 1
            )

        await fake.wait_for(streaming, timeout=90)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        partial = fake.bot_texts(ALICE)[0]
        assert not partial.endswith(RESTARTED)

        process = await start_bot(fake, data_dir, log_path)
        await fake.wait_for(lambda: fake.bot_texts(ALICE)[0].endswith(RESTARTED), timeout=60)
        marked = fake.bot_texts(ALICE)[0]
        assert marked.removesuffix(RESTARTED).strip() and partial.startswith(
            marked.removesuffix(RESTARTED).strip()[:20]
        )
        assert turn_states(data_dir) == [("Count from 1 to 500, separated by commas.", "interrupted")]

        fake.send_text(user, chat, "Say hello.")
        await fake.wait_for(
            lambda: [q for q, state in turn_states(data_dir) if state == "answered"] == ["Say hello."],
            timeout=90,
        )
        # its reply is delivered (not a status line) and is a message of its own
        await fake.wait_for(
            lambda: len(fake.bot_texts(ALICE)) == 2 and not fake.bot_texts(ALICE)[1].startswith("⏳")
        )

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):  # grace 2 s + the few seconds shutdown may take
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await fake.stop()

    log = log_path.read_text(errors="replace")
    assert "lorabot starting: platforms=telegram" in log
    assert "marked 1 replies interrupted by the last restart" in log
    assert "reply answered conversation=telegram:4242" in log
    assert fake.token not in log and fake.token.split(":")[1] not in log
    assert "DEBUG" in log  # the level setting took effect, so DEBUG lines were checked too


async def test_kill_9_mid_regenerate_keeps_the_old_answer_and_marks_the_new_one(tmp_path):
    """A kill -9 while 🔁's new answer is on its way leaves a marked, interrupted turn (out of the
    context), and the old answer with its 👍 kept as a replaced version.

    The new answer may be a few tokens long and land in one edit, so "mid-regenerate" is made
    certain, not hoped for: Telegram's flood control answers the regenerate's first edit with a
    30 s retry_after, and the bot is killed while it waits that out (its text not yet shown)."""
    fake = FakeBotAPI()
    await fake.start()
    data_dir, log_path = tmp_path / "data", tmp_path / "bot.log"
    data_dir.mkdir()
    process = await start_bot(fake, data_dir, log_path)
    try:
        user = fake.add_user(ALICE, "Alice")
        chat = fake.private_chat(user)
        await fake.wait_for(lambda: fake.calls_of("getUpdates"), timeout=60)
        fake.send_text(user, chat, "Count from 1 to 500, separated by commas.")
        answered = await fake.wait_for(  # the final text carries the buttons
            lambda: next((m for m in fake.bot_messages(ALICE) if fake.button_data(m)), None), timeout=120
        )
        turn = fake.button_data(answered)[0].rsplit(":", 1)[1]
        old = answered["text"]
        fake.press_button(user, answered, f"fb:up:{turn}")
        await fake.wait_for(lambda: fake.calls_of("answerCallbackQuery"))
        edits_before = len(fake.calls_of("editMessageText", ok_only=False))
        fake.rate_limit("editMessageText", retry_after=30)
        fake.press_button(user, fake.messages[(ALICE, answered["message_id"])], f"fb:again:{turn}")

        def held_by_flood_control() -> list:
            edits = fake.calls_of("editMessageText", ok_only=False)[edits_before:]
            return [call for call in edits if call.status == 429]

        held = await fake.wait_for(held_by_flood_control, timeout=60)
        assert held[0].params["text"] != old  # the new answer was on its way into the old message
        assert fake.messages[(ALICE, answered["message_id"])]["text"] == old

        process.send_signal(signal.SIGKILL)
        await process.wait()

        process = await start_bot(fake, data_dir, log_path)
        await fake.wait_for(
            lambda: fake.messages[(ALICE, answered["message_id"])]["text"].endswith(RESTARTED), timeout=60
        )
        with sqlite3.connect(data_dir / "history.sqlite3") as db:
            assert db.execute("SELECT state, version FROM turns").fetchall() == [("interrupted", 1)]
            ((version, kept),) = db.execute("SELECT version, answer FROM answer_versions").fetchall()
            assert version == 0 and kept.strip() == old.strip()
            assert db.execute("SELECT version, value FROM ratings").fetchall() == [(0, 1)]
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await fake.stop()


def reply_handles(data_dir: Path) -> list[str]:
    """Where the store says the (only) turn's reply is shown."""
    with sqlite3.connect(data_dir / "history.sqlite3") as db:
        rows = db.execute("SELECT handles FROM turns ORDER BY id").fetchall()
    return json.loads(rows[0][0] or "[]") if rows else []


async def test_kill_9_mid_draft_then_restart_sends_the_note_as_a_message(tmp_path):
    """Drafts on (issue 28): killed while only a draft shows the reply, no message exists. The
    draft vanishes with the process; the restart sends the partial text and the note as a new
    message, in reply to the question, and the turn is interrupted."""
    fake = FakeBotAPI()
    await fake.start()
    data_dir, log_path = tmp_path / "data", tmp_path / "bot.log"
    data_dir.mkdir()
    process = await start_bot(fake, data_dir, log_path, drafts=True)
    try:
        user = fake.add_user(ALICE, "Alice")
        chat = fake.private_chat(user)
        await fake.wait_for(lambda: fake.calls_of("getUpdates"), timeout=60)
        question = fake.send_text(user, chat, "Count from 1 to 500, separated by commas.")

        def drafting() -> bool:  # model text in the draft, no message, and the store knows where
            draft = fake.draft_in(ALICE)
            texts = [d["text"] for d in fake.draft_log if d["text"] and not d["text"].startswith("⏳")]
            return (
                draft not in (None, THINKING)
                and len(texts) >= 2
                and not fake.bot_messages(ALICE)
                and any(":draft:" in ref for ref in reply_handles(data_dir))
            )

        await fake.wait_for(drafting, timeout=90)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        assert fake.bot_messages(ALICE) == []
        last_draft = fake.draft_log[-1]["text"]

        process = await start_bot(fake, data_dir, log_path, drafts=True)
        await fake.wait_for(lambda: fake.bot_texts(ALICE), timeout=60)
        (message,) = fake.bot_messages(ALICE)
        assert message["text"].endswith(RESTARTED)
        partial = message["text"].removesuffix(RESTARTED).strip()
        assert partial and last_draft.startswith(partial[:20]), "the text the user saw, then the note"
        assert message["reply_to_message"]["message_id"] == question["message_id"]
        assert fake.draft_in(ALICE) is None
        assert turn_states(data_dir) == [("Count from 1 to 500, separated by commas.", "interrupted")]

        fake.send_text(user, chat, "Say hello.")
        await fake.wait_for(
            lambda: [q for q, state in turn_states(data_dir) if state == "answered"] == ["Say hello."],
            timeout=90,
        )
        await fake.wait_for(lambda: len(fake.bot_texts(ALICE)) == 2)  # its final text: a message
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await fake.stop()
    log = log_path.read_text(errors="replace")
    assert "marked 1 replies interrupted by the last restart" in log
