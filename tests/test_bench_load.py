"""`lorabot bench load` on tiny numbers: the real bot process against each fake platform.

Not timed: these check that the harness runs end to end and reports sane fields, and that its
notion of a "final" answer is exact (tests of the bots' behaviour under load live elsewhere).
"""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from bench.load import TARGETS, drafts_modes, measure
from bench.load_users import Ask, FinishedTurns, Tracker, World, is_status, layout, normalized

pytestmark = pytest.mark.slow


@pytest.fixture
def short_answers(monkeypatch):
    """The environment's LORABOT_* settings out, and short answers (bot and engine alike)."""
    for name in list(os.environ):
        if name.startswith(("LORABOT_", "DISCORD_", "TELEGRAM_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LORABOT_MAX_NEW_TOKENS", "8")


def check_result(result: dict, *, platform: str, users: int) -> None:
    assert result["platform"] == platform
    assert result["users"] == users and result["planned"] == users
    assert result["sent"] == users
    assert result["answered"] > 0
    assert result["answered"] + result["refused"] + result["errors"] + result["unanswered"] == users
    for name in TARGETS:
        assert name in result, name
    assert (
        result["first_text_p50_s"] is not None
        and 0 < result["first_text_p50_s"] <= result["final_text_p95_s"]
    )
    assert result["final_text_p50_s"] <= result["final_text_p95_s"]
    assert result["api_calls"]["send"] >= result["answered"]
    assert result["api_calls_per_reply"] >= 1
    assert result["delivered_replies_per_s"] > 0 and result["engine_replies_per_s"] > 0
    assert result["delivery_vs_engine"] > 0
    assert result["engine_replies"] == users and result["engine_complete"]
    assert result["bot_exit_code"] is not None and result["bot_exit_s"] is not None
    assert not result["bot_died_early"]
    assert os.path.exists(result["log"])
    assert result["stuck_after_exit"] == 0
    # the rating step: every answer rated once, by a button or a reaction, and every rating stored
    assert result["ratings_given"] == result["answered"] and result["answers_without_buttons"] == 0
    assert result["ratings_stored"] == result["ratings_given"] and result["ratings_lost"] == 0


async def test_telegram_private_chats_and_a_group(short_answers, tmp_path):
    result = await measure(
        "telegram", users=3, messages=1, groups=1, group_users=1, timeout_s=120, ramp_s=0.5,
        workdir=tmp_path, engine_s=60,
    )  # fmt: skip
    check_result(result, platform="telegram", users=4)
    assert set(result["by_place"]) == {"private", "group"}
    # the same users with drafts on (the result's own figures), then off (issue 28)
    on, off = result["drafts_compare"]["on"], result["drafts_compare"]["off"]
    assert on["api_calls"] == result["api_calls"] and on["run_dir"] != off["run_dir"]
    assert on["api_calls"]["draft"] >= 3, "a placeholder at least in each private chat"
    assert off["api_calls"]["draft"] == 0 and off["answered"] > 0
    assert on["first_text_p50_s"] is not None and off["first_text_p50_s"] is not None
    assert result["targets_met"] == (on["targets_met"] and off["targets_met"])


def test_drafts_modes():
    assert drafts_modes("telegram") == [True, False]
    assert drafts_modes("telegram", "off") == [False] and drafts_modes("telegram", "on, off") == [True, False]
    assert drafts_modes("discord") == [None]
    with pytest.raises(ValueError, match="drafts must be"):
        drafts_modes("telegram", "maybe")


async def test_discord_channels_and_a_dm(short_answers, tmp_path):
    result = await measure(
        "discord", users=3, messages=1, dms=1, timeout_s=120, ramp_s=0.5, workdir=tmp_path, engine_s=60
    )
    check_result(result, platform="discord", users=4)
    assert set(result["by_place"]) == {"channel", "dm"}


# -- when an answer counts as final (no bot, no model) ---------------------------------------------
class Screen(World):
    """A World whose bot messages are set by the test: key -> text."""

    platform = "test"

    def __init__(self) -> None:
        super().__init__(None, layout("telegram", 1, groups=0))
        self.texts: dict[int, str] = {}

    def text_of(self, key):
        return self.texts[key]

    def scan(self) -> None:
        pass

    def bot_texts(self):
        return list(self.texts.values())


def finished_turns(tmp_path, *turns: tuple[str, str]) -> FinishedTurns:
    path = tmp_path / "history.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE turns (id INTEGER PRIMARY KEY, question TEXT, answer TEXT, state TEXT, "
            "version INTEGER NOT NULL DEFAULT 0)"
        )
        db.executemany("INSERT INTO turns (question, answer, state) VALUES (?, ?, 'answered')", turns)
    return FinishedTurns(path)


def test_an_answer_is_final_only_when_it_equals_the_stored_one(tmp_path):
    screen = Screen()
    turns = finished_turns(tmp_path, ("What is 2+2?", "It is 4.\n\n```python\nprint(2 + 2)\n```"))
    tracker = Tracker(screen, turns)
    ask = Ask(0, "private", "private-0", "What is 2+2?", (1, 1), time.monotonic())
    tracker.add(ask)
    ask.messages.append(10)
    screen.texts[10] = "⏳ In line: #3"
    tracker.poll(turns_changed=False)
    assert ask.first_response_at is not None and ask.first_text_at is None and ask.outcome is None
    screen.texts[10] = "It is"
    tracker.poll(turns_changed=False)
    assert ask.first_text_at is not None and ask.outcome is None
    turns.refresh()
    tracker.poll(turns_changed=True)
    assert ask.outcome is None  # half an answer is not final, however long it stays
    # the rest arrives split over two messages (a fence closed and reopened at the cut)
    screen.texts[10] = "It is 4.\n\n```python\nprint(2\n```"
    ask.messages.append(11)
    screen.texts[11] = "```python\n+ 2)\n```"
    tracker.poll(turns_changed=False)
    assert ask.outcome == "answered" and ask.final_at == ask.changed_at
    assert tracker.open == []


def test_a_draft_is_the_first_text_and_the_message_the_final_one(tmp_path):
    """Drafts (issue 28): the placeholder is a response, the draft's text the first text; the
    answer is final only once its message is there."""
    screen = Screen()
    drafts: dict[tuple[int, int], str] = {}
    screen.draft_of = lambda ask: drafts.get(ask.key)  # type: ignore[method-assign]
    turns = finished_turns(tmp_path, ("What is 2+2?", "It is 4."))
    tracker = Tracker(screen, turns)
    ask = Ask(0, "private", "private-0", "What is 2+2?", (1, 1), time.monotonic())
    tracker.add(ask)
    tracker.poll(turns_changed=False)
    assert ask.first_response_at is None
    drafts[(1, 1)] = ""  # "Thinking…"
    tracker.poll(turns_changed=False)
    assert ask.first_response_at is not None and ask.first_text_at is None
    drafts[(1, 1)] = "⏳ Waiting in line: #2"
    tracker.poll(turns_changed=False)
    assert ask.first_text_at is None
    drafts[(1, 1)] = "It is 4."
    turns.refresh()
    tracker.poll(turns_changed=True)
    assert ask.first_text_at is not None and ask.outcome is None, "a draft is no answer yet"
    del drafts[(1, 1)]
    ask.messages.append(10)
    screen.texts[10] = "It is 4."
    tracker.poll(turns_changed=False)
    assert ask.outcome == "answered"


def test_refusals_and_errors_are_told_apart(tmp_path):
    screen = Screen()
    tracker = Tracker(screen, finished_turns(tmp_path))
    busy = Ask(0, "private", "private-0", "hi", (1, 1), time.monotonic())
    broken = Ask(0, "private", "private-0", "hello", (1, 2), time.monotonic())
    chatty = Ask(0, "private", "private-0", "hey", (1, 3), time.monotonic())
    for number, ask in enumerate((busy, broken, chatty)):
        tracker.add(ask)
        ask.messages.append(number)
    screen.texts.update(
        {
            0: "⚠️ I'm busy right now (32 requests waiting). Please try again in a minute.",
            1: "Partial answer\n\n⚠️ The model failed while answering, so this reply stopped.",
            2: "A busy day starts with a good breakfast",  # the model's words, not a refusal
        }
    )
    tracker.poll(turns_changed=False)
    assert busy.outcome == "refused"
    assert broken.outcome is None  # an error text must hold still a moment first
    broken.changed_at -= 10
    tracker.poll(turns_changed=False)
    assert broken.outcome == "error" and chatty.outcome is None
    assert tracker.statuses() == 0


def test_normalized_ignores_what_platforms_change():
    assert normalized("Hi @\u2060bob,\n\n  ```py\nx = 1\n```") == normalized("hi @bob, x = 1")
    assert is_status("⏳ In line: #2, about 40 s") and is_status("✍️ writing…") and not is_status("Hello")
