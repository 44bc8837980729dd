"""`lorabot bench loop` on small numbers: the real bot process against the fake Telegram, real KTO
training of the embedded model, the live A/B in the bot's database.

Not timed and not a check of what is learned (a few dozen ratings and two steps teach nothing):
these check that the loop runs end to end (every rating given through the buttons is stored, the
candidate trains and registers, the A/B routes conversations as its stored arms say) and that a bad
rater stops it with a one-line error. The figures are docs/benchmarks.md's ("Learning loop").
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench.raters import RaterError, brief, listy, load_rater, verdict

ROOT = Path(__file__).resolve().parents[1]
RATER_FILE = '''
import zlib

def coin(question, answer):
    """A taste the test can count on: about a third each of 👍, 👎 and 🔁, by the answer's hash."""
    return ("up", "down", "again")[zlib.crc32(answer.encode()) % 3]

def boom(question, answer):
    raise ValueError("no opinion")

def shrug(question, answer):
    return "maybe"
'''


@pytest.fixture
def rater_file(tmp_path) -> Path:
    path = tmp_path / "my_rater.py"
    path.write_text(RATER_FILE)
    return path


@pytest.fixture
def clean_env(monkeypatch):
    """None of this environment's LORABOT_* / platform settings reach the bot."""
    for name in list(os.environ):
        if name.startswith(("LORABOT_", "DISCORD_", "TELEGRAM_")):
            monkeypatch.delenv(name)


# -- raters (no model) -----------------------------------------------------------------------------
def test_shipped_raters_like_what_they_say():
    assert brief("Tell me about tea.", "Tea is a drink made from leaves.") == "up"
    assert brief("Tell me about tea.", "word " * 60) in ("down", "again")
    assert listy("Tips?", "Here are some:\n1. Sleep well.\n2. Drink water.") == "up"
    assert listy("Tips?", "- one\n- two") == "up"
    assert listy("Tips?", "Sleep well and drink water.") in ("down", "again")


def test_a_rater_file_loads_and_its_verdicts_are_checked(rater_file):
    name, coin = load_rater(f"{rater_file}:coin")
    assert name == "my_rater.py:coin"
    assert verdict(coin, name, "q", "an answer") in ("up", "down", "again")
    assert verdict(lambda q, a: True, "t", "q", "a") == "up"
    assert verdict(lambda q, a: "👎", "t", "q", "a") == "down"
    _, shrug = load_rater(f"{rater_file}:shrug")
    with pytest.raises(RaterError, match="returned 'maybe'"):
        verdict(shrug, "my_rater.py:shrug", "q", "a")
    _, boom = load_rater(f"{rater_file}:boom")
    with pytest.raises(RaterError, match="raised ValueError: no opinion"):
        verdict(boom, "my_rater.py:boom", "q", "a")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuch", "give a shipped rater"),
        ("/nonexistent/rater.py:f", "no file"),
        ("{file}:missing", "has no 'missing'"),
        ("{file}:zlib", "is not a function"),
    ],
)
def test_bad_rater_specs_say_what_is_wrong(rater_file, spec, message):
    with pytest.raises(RaterError, match=message):
        load_rater(spec.format(file=rater_file))


# -- the loop ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_small_loop_trains_registers_and_splits_the_ab(clean_env, rater_file, tmp_path):
    pytest.importorskip("trl")
    from bench.loop import LoopOptions, measure
    from core.ab import arm_of, latest_test
    from core.history import ConversationStore

    options = LoopOptions(
        rater=f"{rater_file}:coin", ratings=24, ab_ratings=4, max_tokens=16, users=4, steps=2,
        workdir=tmp_path, progress=False,
    )  # fmt: skip
    result = measure(options)

    # (a) every rating pressed through the fake Telegram's buttons is stored, 🔁 included
    assert result["ratings_given"] == 24 and result["ratings_stored"] == 24 and result["ratings_lost"] == 0
    assert result["answers_without_buttons"] == 0 and result["regenerations"] > 0
    assert result["kto_rows"] == 24 and result["kto_desirable"] > 0 and result["kto_undesirable"] > 0
    # (b) the candidate trained, was exported and registered in the bot's models file
    data = Path(result["run_dir"]) / "data"
    models = tomllib.loads((data / "models.toml").read_text())["models"]
    candidate = result["candidate"]
    assert candidate == "loop-coin" and Path(models[candidate]["path"]).is_file()
    assert Path(models[candidate]["path"]) == Path(result["candidate_file"])
    # (c) the A/B: both arms were served and rated, and every held-out answer came from the model
    # of the arm stored for its conversation
    assert result["served_ratings"] >= 4 and result["candidate_ratings"] >= 4
    assert result["ab"]["test"]["share"] == 0.5 and result["ab"]["test"]["stopped_at"] is not None
    assert result["ab_ratings_stored"] == result["ab_ratings_given"]
    with sqlite3.connect(data / "history.sqlite3") as db:
        asked = db.execute(
            "SELECT conversation_id, model FROM turns WHERE created_at >= ? AND state = 'answered'",
            (result["ab"]["test"]["started_at"],),
        ).fetchall()
    assert {model for _, model in asked} == {"smollm2-135m", candidate}

    async def routed() -> list[str | None]:
        store = await ConversationStore.open(f"sqlite:///{data / 'history.sqlite3'}")
        try:
            test = await latest_test(store)
            assert test is not None
            arms = [await arm_of(store, conversation, test) for conversation, _ in asked]
            return [None if arm is None else test.model_of(arm) for arm in arms]
        finally:
            await store.close()

    assert asyncio.run(routed()) == [model for _, model in asked]
    assert result["served_perplexity"] > 1 and result["candidate_perplexity"] > 1
    assert set(result["seconds"]) >= {"ratings", "train", "ab", "perplexity", "total"}
    assert set(result["targets"]) == {
        "up_rate_gain_points", "interval_gap_points", "perplexity_change_pct", "total_s", "ratings_lost",
    }  # fmt: skip


@pytest.mark.slow
def test_a_rater_that_raises_stops_the_bench_with_one_line(clean_env, rater_file, tmp_path):
    """Through the CLI: exit 2, the rater's error in one line, no traceback, the bot stopped."""
    env = dict(os.environ) | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "lorabot", "bench", "loop", "--rater", f"{rater_file}:boom", "--ratings", "10",
         "--max-tokens", "8", "--users", "2", "--workdir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "rater my_rater.py:boom raised ValueError: no opinion" in output
    assert "Traceback" not in output
    (run_dir,) = tmp_path.glob("lorabot-loop-*")
    assert "Telegram bot stopped" in (run_dir / "bot.log").read_text()  # SIGTERM, a clean exit
