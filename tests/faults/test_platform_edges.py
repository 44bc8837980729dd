"""Platform edges: deleted interaction responses, messages deleted over and over, timed-out sends,
threads for refused questions, and per-user/per-chat state that must not grow forever.

Each test drives the real discord.py / python-telegram-bot against the fake servers and asserts
what the user sees (the channel's or chat's visible messages), not only what was called.
"""

from __future__ import annotations

import logging

from test_under_load import discord_bot

from bench.fakes.discord import FakeDiscord

TEXT = " ".join(f"w{i}" for i in range(30))


async def test_discord_chat_whose_deferred_response_was_deleted_answers_in_a_follow_up(tmp_path):
    """The "thinking…" response of /chat is deleted before the answer: editing it answers 10008
    on every try. The answer comes as one follow-up instead, after a single refused edit."""
    async with discord_bot(tmp_path, TEXT, token_delay_s=0.02) as (fake, client, _):
        fake.auto_delete = lambda message: bool(message.get("_original"))
        token = await fake.slash("chat", {"prompt": "go"})
        await fake.wait_until(lambda: TEXT in fake.visible_texts(), timeout=20)
        await client.wait_idle()
    refused = [c for c in fake.calls if c.status == 404]
    assert [(c.method, c.path.rsplit("/", 1)[-1]) for c in refused] == [("PATCH", "@original")]
    assert [m["content"] for m in fake.interaction_messages(token)] == [TEXT]
    assert fake.visible_texts(FakeDiscord.CHANNEL_ID) == [TEXT]


async def test_discord_reply_deleted_every_time_gives_up_after_a_few_resends(tmp_path, caplog):
    """An automod deletes every message of the bot: the reply is sent again a few times, then
    delivery gives up with a log line (it used to resend as long as the reply lasted)."""
    caplog.set_level(logging.INFO, logger="bots.delivery")
    long_text = " ".join(f"w{i}" for i in range(200))  # still being written when delivery gives up
    async with discord_bot(tmp_path, long_text, token_delay_s=0.05, edit_interval_s=0.1) as (fake, client, _):
        fake.auto_delete = lambda message: True
        await fake.user_message("go", mention_bot=True)
        await fake.wait_until(lambda: "giving up on this reply" in caplog.text, timeout=20)
        await client.wait_idle()
    sends = fake.find("POST", r"^/channels/\d+/messages$")
    assert len(sends) == 4  # the first message and three resends
    assert fake.visible_texts(FakeDiscord.CHANNEL_ID) == []
