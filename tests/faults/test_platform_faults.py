"""Platform failures while a reply is on screen: 5xx and timeouts, deleted messages.

Intermediate edits that fail are skipped (a later edit carries the newer text); the final text is
retried, then sent as a new message; a reply deleted mid-stream is sent again. Never an unhandled
exception, never a reply stuck on a stale partial.
"""

from __future__ import annotations

import pytest

from bench.fakes.discord import FakeDiscord
from test_under_load import discord_bot, telegram_bot

TEXT = " ".join(f"w{i}" for i in range(40))


async def test_telegram_5xx_on_intermediate_edits_does_not_abort_the_reply(tmp_path):
    async with telegram_bot(tmp_path, TEXT, token_delay_s=0.02) as (fake, _):
        alice = fake.add_user(51, "Alice")
        fake.fail_next("editMessageText", status=502, times=2)
        fake.send_text(alice, fake.private_chat(alice), "go")
        await fake.wait_for(lambda: fake.bot_texts(51) and fake.bot_texts(51)[-1] == TEXT, timeout=20)
    failed = [c for c in fake.calls_of("editMessageText", ok_only=False) if c.status == 502]
    assert len(failed) == 2 and len(fake.bot_texts(51)) == 1


async def test_telegram_final_edit_failing_is_retried(tmp_path):
    """Bob's status line is on screen; the edit that turns it into his answer fails twice.
    (A long edit interval: no edits in between, the only edit is the final one.)"""
    async with telegram_bot(
        tmp_path, "all done now", token_delay_s=0.5, parallel=1, kv_slots=1, edit_interval_s=60
    ) as (fake, _):
        alice, bob = fake.add_user(61, "Alice"), fake.add_user(62, "Bob")
        fake.send_text(alice, fake.private_chat(alice), "first")
        await fake.wait_for(lambda: fake.bot_texts(61))
        fake.send_text(bob, fake.private_chat(bob), "second")
        await fake.wait_for(lambda: fake.bot_texts(62) and fake.bot_texts(62)[0].startswith("⏳"))
        await fake.wait_for(lambda: fake.bot_texts(61) == ["all done now"])  # Bob's final edit is next
        fake.fail_next("editMessageText", status=502, times=2)
        await fake.wait_for(lambda: fake.bot_texts(62) == ["all done now"], timeout=20)
    assert [c.status for c in fake.calls_of("editMessageText", ok_only=False, chat_id=62)][-3:] == [502, 502, 200]


@pytest.mark.parametrize("deleted_at", ["mid-stream", "final"])
async def test_discord_reply_deleted_mid_stream_is_sent_again(tmp_path, deleted_at):
    interval = 0.2 if deleted_at == "mid-stream" else 60  # "final": the only edit is the final text
    async with discord_bot(
        tmp_path, TEXT, token_delay_s=0.02, parallel=1, kv_slots=1, edit_interval_s=interval
    ) as (fake, client, _):
        if deleted_at == "final":  # someone else's reply runs; ours shows a status line, then gets deleted
            blocker = await fake.user_message("first", mention_bot=True, user_id=901)
            await fake.wait_until(lambda: fake.replies_to(blocker["id"]))
            # ours waits behind it: its status line is what gets deleted
        fake.fail_next("PATCH", r"^/channels/\d+/messages/\d+$", status=404, code=10008)
        message = await fake.user_message("go", mention_bot=True)
        await fake.wait_until(
            lambda: any(m["content"] == TEXT for m in fake.bot_messages(FakeDiscord.CHANNEL_ID)), timeout=20
        )
        await client.wait_idle()
    failed = [c for c in fake.calls if c.method == "PATCH" and c.status == 404]
    assert len(failed) == 1
    assert any(m["content"] == TEXT for m in fake.bot_messages(FakeDiscord.CHANNEL_ID))
    assert message  # the user's message stays; the answer was posted again after the deletion


async def test_stats_tells_admins_about_a_broken_models_file(tmp_path):
    async with telegram_bot(tmp_path, "still here") as (fake, service):
        service.settings.resolved_models_file.write_text("[models.oops\npath = 'x.gguf'\n")
        alice = fake.add_user(71, "Alice")
        chat = fake.private_chat(alice)
        fake.send_text(alice, chat, "hello")  # replies go on with the last good registry
        await fake.wait_for(lambda: fake.bot_texts(71) == ["still here"])
        fake.send_text(alice, chat, "/stats")
        await fake.wait_for(lambda: len(fake.bot_texts(71)) == 2)
    assert "models file problem" in fake.bot_texts(71)[1] and "line 1" in fake.bot_texts(71)[1]
