"""Platform failures while a reply is on screen: 5xx and timeouts, deleted messages.

Intermediate edits that fail are skipped (a later edit carries the newer text); the final text is
retried, then sent as a new message; a reply deleted mid-stream is sent again. Never an unhandled
exception, never a reply stuck on a stale partial.
"""

from __future__ import annotations

from test_under_load import discord_bot, telegram_bot

from bench.fakes.discord import FakeDiscord
from core.engines.base import GenerationRequest

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
    assert [c.status for c in fake.calls_of("editMessageText", ok_only=False, chat_id=62)][-3:] == [
        502,
        502,
        200,
    ]


def answer_to(request: GenerationRequest) -> str:
    """Each question gets its own answer, so the channel shows whose is whose."""
    return f"{TEXT} ({request.messages[-1]['content']})"


async def test_discord_reply_deleted_mid_stream_is_sent_again_once(tmp_path):
    """A moderator deletes the reply while it grows: the next edit gets 10008, the reply is sent
    again, and the channel shows the answer exactly once."""
    async with discord_bot(tmp_path, answer_to, token_delay_s=0.05, edit_interval_s=0.2) as (fake, client, _):
        message = await fake.user_message("go", mention_bot=True)
        first = await fake.wait_until(lambda: fake.replies_to(message["id"]))
        await fake.delete_message(first[0]["id"])
        await fake.wait_until(lambda: f"{TEXT} (go)" in fake.visible_texts(), timeout=20)
        await client.wait_idle()
    refused = [c for c in fake.calls if c.status == 404 and c.path.endswith(f"/messages/{first[0]['id']}")]
    assert refused and all(c.method == "PATCH" for c in refused)  # the deleted one was edited, not found
    assert fake.visible_texts(FakeDiscord.CHANNEL_ID) == [f"{TEXT} (go)"]


async def test_discord_status_line_deleted_before_the_final_text(tmp_path):
    """Bob's question waits behind Alice's: his status line is on screen and gets deleted; the edit
    that would turn it into his answer finds it gone, and his answer is posted once, as a new
    message. Alice's reply is untouched."""
    async with discord_bot(
        tmp_path, answer_to, token_delay_s=0.05, parallel=1, kv_slots=1, edit_interval_s=60
    ) as (fake, client, _):
        alice = await fake.user_message("first", mention_bot=True, user_id=901)
        await fake.wait_until(lambda: fake.replies_to(alice["id"]))
        bob = await fake.user_message("second", mention_bot=True, user_id=902)
        status = await fake.wait_until(
            lambda: [m for m in fake.replies_to(bob["id"]) if m["content"].startswith("⏳")]
        )
        await fake.delete_message(status[0]["id"])
        await fake.wait_until(lambda: f"{TEXT} (second)" in fake.visible_texts(), timeout=20)
        await client.wait_idle()
    refused = [c for c in fake.calls if c.status == 404]
    assert [c.path for c in refused] == [f"/channels/{FakeDiscord.CHANNEL_ID}/messages/{status[0]['id']}"]
    assert fake.visible_texts(FakeDiscord.CHANNEL_ID) == [f"{TEXT} (first)", f"{TEXT} (second)"]


async def test_telegram_reply_deleted_mid_stream_is_sent_again_once(tmp_path):
    """Telegram answers an edit of a deleted message with 400 "message to edit not found"; the
    reply is sent again and the chat shows it exactly once."""
    async with telegram_bot(tmp_path, answer_to, token_delay_s=0.05, edit_interval_s=0.2) as (fake, _):
        alice = fake.add_user(81, "Alice")
        fake.send_text(alice, fake.private_chat(alice), "go")
        await fake.wait_for(lambda: fake.bot_messages(81))
        gone = fake.delete_message(81, fake.bot_messages(81)[0]["message_id"])
        await fake.wait_for(lambda: f"{TEXT} (go)" in fake.bot_texts(81), timeout=20)
    refused = [c for c in fake.calls_of("editMessageText", ok_only=False) if c.status == 400]
    assert refused and {c.params["message_id"] for c in refused} == {gone["message_id"]}
    assert fake.bot_texts(81) == [f"{TEXT} (go)"]


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
