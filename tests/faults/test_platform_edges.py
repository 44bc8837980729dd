"""Platform edges: deleted interaction responses, messages deleted over and over, timed-out sends,
threads for refused questions, and per-user/per-chat state that must not grow forever.

Each test drives the real discord.py / python-telegram-bot against the fake servers and asserts
what the user sees (the channel's or chat's visible messages), not only what was called.
"""

from __future__ import annotations

import logging

from test_under_load import discord_bot, telegram_bot

from bench.fakes.discord import FakeDiscord
from bots.pacing import Pacer, Rule
from core.errors import RateLimited
from core.limits import UserRateLimiter

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


async def test_discord_send_whose_answer_never_came_is_not_posted_twice(tmp_path):
    """Discord posts the reply but the connection drops before the answer: the send is tried
    again with the same nonce (enforce_nonce), so Discord hands back the message it already has
    instead of posting a second one; it is edited to the newest text."""
    async with discord_bot(tmp_path, TEXT, token_delay_s=0.05) as (fake, client, _):
        fake.drop_next("POST", r"^/channels/\d+/messages$")
        message = await fake.user_message("go", mention_bot=True)
        await fake.wait_until(lambda: TEXT in fake.visible_texts(), timeout=20)
        await client.wait_idle()
    sends = fake.find("POST", r"^/channels/\d+/messages$")
    assert len(sends) == 2 and sends[0].json["nonce"] == sends[1].json["nonce"]
    assert fake.visible_texts(FakeDiscord.CHANNEL_ID) == [TEXT]
    assert [m["content"] for m in fake.replies_to(message["id"])] == [TEXT]


async def test_discord_send_found_by_its_nonce_whose_update_is_lost_is_not_posted_twice(tmp_path):
    """The send's answer is lost, the retry finds the posted message by its nonce, and the edit
    that brings it to the newest text loses its answer too: the message is known only to Discord
    yet, so the next try must find it again by the same nonce, not post a second one."""
    async with discord_bot(tmp_path, TEXT, token_delay_s=0.05) as (fake, client, _):
        fake.drop_next("POST", r"^/channels/\d+/messages$")
        fake.drop_next("PATCH", r"^/channels/\d+/messages/\d+$")  # the first edit: the one inside the send
        message = await fake.user_message("go", mention_bot=True)
        await fake.wait_until(lambda: TEXT in fake.visible_texts(), timeout=20)
        await client.wait_idle()
    sends = fake.find("POST", r"^/channels/\d+/messages$")
    assert fake.visible_texts(FakeDiscord.CHANNEL_ID) == [TEXT]
    assert [m["content"] for m in fake.replies_to(message["id"])] == [TEXT]
    assert len(sends) == 3 and len({s.json["nonce"] for s in sends}) == 1


async def test_telegram_send_whose_answer_never_came_is_not_sent_again(tmp_path, caplog):
    """Telegram takes sendMessage but the answer never comes: without a nonce a second send could
    show the text twice, so the reply stops there (one message on screen, logged)."""
    caplog.set_level(logging.INFO, logger="bots.delivery")
    async with telegram_bot(tmp_path, TEXT, token_delay_s=0.05) as (fake, _):
        alice = fake.add_user(91, "Alice")
        fake.drop_next("sendMessage")
        fake.send_text(alice, fake.private_chat(alice), "go")
        await fake.wait_for(lambda: "not sending it twice" in caplog.text, timeout=20)
    assert len(fake.calls_of("sendMessage", ok_only=False)) == 1
    assert len(fake.bot_texts(91)) == 1 and TEXT.startswith(fake.bot_texts(91)[0])


async def test_telegram_final_edit_that_keeps_failing_leaves_the_answer_once(tmp_path):
    """The final edit fails past its retries: the answer is sent as a new message and the stale
    message above it is deleted, so the chat shows the answer once, not a partial and the answer."""
    async with telegram_bot(tmp_path, TEXT, token_delay_s=0.05, edit_interval_s=0.2) as (fake, _):
        alice = fake.add_user(92, "Alice")
        fake.send_text(alice, fake.private_chat(alice), "go")
        await fake.wait_for(lambda: fake.bot_texts(92))
        fake.fail_next("editMessageText", status=502, times=100)
        await fake.wait_for(lambda: TEXT in fake.bot_texts(92), timeout=40)
        await fake.wait_for(lambda: fake.bot_texts(92) == [TEXT], timeout=10)
    assert fake.bot_texts(92) == [TEXT] and len(fake.deleted) == 1


async def test_discord_refused_question_starts_no_thread(tmp_path):
    """With DISCORD_REPLY_IN_THREAD, a question over the user's rate limit is refused inline and
    starts no thread (the thread used to be created before the limit was checked)."""
    async with discord_bot(tmp_path, TEXT, rate_limit_messages=1) as (fake, client, _):
        client.settings.reply_in_thread = True
        first = await fake.user_message("first question", mention_bot=True)
        await fake.wait_until(lambda: TEXT in fake.visible_texts(int(first["id"])), timeout=20)
        await client.wait_idle()
        second = await fake.user_message("second question", mention_bot=True)
        refusal = await fake.wait_until(lambda: fake.replies_to(second["id"]))
        await client.wait_idle()
    assert [c.path for c in fake.find("POST", r"/threads$")] == [
        f"/channels/{FakeDiscord.CHANNEL_ID}/messages/{first['id']}/threads"
    ]
    assert int(refusal[0]["channel_id"]) == FakeDiscord.CHANNEL_ID and refusal[0]["content"].startswith("⚠️")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_100k_users_do_not_grow_the_rate_limiter_and_an_active_user_is_still_limited():
    """Every user used to keep a throttler forever. Now idle windows are dropped: 100k users over
    100 s keep about one window's worth, and Alice, asking every second, is limited exactly as an
    unbounded limiter would limit her."""
    clock = Clock()
    limiter = UserRateLimiter(2, 10.0, clock=clock)
    reference: list[float] = []  # Alice's accepted times, kept forever
    largest, outcomes, expected = 0, [], []
    for i in range(100_000):
        clock.now = 1000.0 + i * 0.001
        await limiter.check(f"user{i}")
        if i % 1000 == 0:  # Alice, once a second
            recent = [t for t in reference if t > clock.now - 10.0]
            expected.append(len(recent) < 2)
            if expected[-1]:
                reference.append(clock.now)
            try:
                await limiter.check("alice")
                outcomes.append(True)
            except RateLimited:
                outcomes.append(False)
        largest = max(largest, len(limiter.windows))
    assert outcomes == expected and outcomes.count(False) > 0
    assert largest <= 25_000  # ~10k users inside one 10 s window, plus the sweep's slack


async def test_100k_chats_do_not_grow_the_pacer_and_an_active_chat_keeps_its_limit():
    clock = Clock()
    pacer = Pacer(lambda chat: Rule(3, 4.0), Rule(10**9, 1.0), clock=clock)
    largest = 0
    for i in range(100_000):
        clock.now = 1000.0 + i * 0.001
        assert pacer.try_acquire(f"chat{i}")
        if i % 1000 == 0:
            pacer.hold(f"chat{i}", 0.5)  # a 429 now and then: holds that ended are forgotten too
        if i == 50_000:  # an active chat mid-flood: two typing-class calls (one kept for a final text)
            assert [pacer.try_acquire("busy") for _ in range(3)] == [True, True, False]
            started = clock.now
        if 50_000 < i and clock.now < started + 4.0:
            assert not pacer.try_acquire("busy")
        largest = max(largest, pacer.tracked_chats)
    assert pacer.try_acquire("busy")  # its window passed
    assert largest <= 15_000  # ~4k chats inside one 4 s window, plus the sweep's slack
