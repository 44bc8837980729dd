"""Delivery under load (issue 9), against the fakes with the platforms' rate limits on.

Generation is decoupled from delivery: a 429 never holds a generation slot, waiting chats cost
a bounded number of calls, a user's second question queues behind the first, a global 429 in
Discord never stalls the bot, and shutdown is bounded even when the platform is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from bench.fakes.discord import FakeDiscord
from bench.fakes.telegram import FakeBotAPI
from bots.discord_bot.client import LorabotClient
from bots.discord_bot.runner import run_discord
from bots.discord_bot.settings import DiscordSettings
from bots.telegram_bot import run_telegram
from bots.telegram_bot.settings import TelegramSettings
from support.engines import make_service


# -- Telegram -------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def telegram_bot(tmp_path, reply, *, edit_interval_s=0.2, drafts=False, **core):
    """`drafts` off: private replies are messages edited as they grow, what these tests load."""
    fake = FakeBotAPI()
    await fake.start()
    service = make_service(tmp_path, reply, **core)
    await service.start()
    settings = TelegramSettings(
        _env_file=None, token=fake.token, api_base_url=fake.base_url, file_base_url=fake.base_file_url,
        edit_interval_s=edit_interval_s, group_edit_interval_s=0.5, typing_interval_s=1.0, shutdown_grace_s=0,
        drafts=drafts,
    )  # fmt: skip
    task = asyncio.create_task(run_telegram(service, settings))
    try:
        await fake.wait_for(lambda: fake.calls_of("getUpdates"))
        yield fake, service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        await service.close(drain_timeout_s=1)
        await fake.stop()


async def test_a_429_on_an_edit_never_holds_the_generation_slot(tmp_path):
    """Alice's reply is stuck behind 429s; Bob's question (parallel=1) must start meanwhile."""
    text = "first answer " * 10
    async with telegram_bot(tmp_path, text, token_delay_s=0.01, parallel=1, kv_slots=1) as (fake, service):
        alice, bob = fake.add_user(11, "Alice"), fake.add_user(12, "Bob")
        fake.rate_limit("editMessageText", retry_after=2, times=4)  # ~8 s of flood control
        fake.send_text(alice, fake.private_chat(alice), "one")
        await fake.wait_for(lambda: fake.calls_of("editMessageText", ok_only=False))
        fake.send_text(bob, fake.private_chat(bob), "two")
        engine = await fake.wait_for(lambda: service.engines.get(service.settings.default_model))
        await fake.wait_for(lambda: len(engine.requests) == 2, timeout=5)
        # Bob is being generated while Alice's final text still waits out the 429s
        assert fake.bot_texts(11)[-1] != text.strip()
        await fake.wait_for(lambda: fake.bot_texts(11)[-1] == text.strip(), timeout=20)
        await fake.wait_for(lambda: fake.bot_texts(12) and fake.bot_texts(12)[-1] == text.strip(), timeout=20)


async def test_waiting_chats_cost_a_bounded_number_of_calls(tmp_path):
    """Eight chats, one slot: each waiting chat sees one status line (and a rare update), and typing
    only while its own reply is generated — not every interval for every waiting chat."""
    users = list(range(21, 29))
    async with telegram_bot(tmp_path, "done " * 20, token_delay_s=0.02, parallel=1, kv_slots=1) as (
        fake,
        service,
    ):
        for user_id in users:
            user = fake.add_user(user_id, f"U{user_id}")
            fake.send_text(user, fake.private_chat(user), "hi")
        await fake.wait_for(
            lambda: all(fake.bot_texts(u) and fake.bot_texts(u)[-1] == ("done " * 20).strip() for u in users),
            timeout=60,
        )
    for user_id in users:
        calls = [c for c in fake.calls if c.params.get("chat_id") == user_id and c.method != "getUpdates"]
        typing = [c for c in calls if c.method == "sendChatAction"]
        statuses = [c for c in calls if str(c.params.get("text", "")).startswith("⏳")]
        assert len(typing) <= 2, (user_id, len(typing))  # generation takes ~0.4 s: one, maybe two
        assert len(statuses) <= 2, (user_id, [c.params["text"] for c in statuses])
        # generation ~0.4 s ÷ 0.2 s edit interval + 3, plus the status line and a typing call
        assert len(calls) <= 0.4 / 0.2 + 3 + 2, (user_id, [c.method for c in calls])


async def test_a_second_question_while_the_first_waits_queues_behind_it(tmp_path):
    reply = lambda request: "answer to " + request.messages[-1]["content"]  # noqa: E731
    async with telegram_bot(
        tmp_path, reply, token_delay_s=0.05, parallel=1, kv_slots=1, max_waiting_per_user=2
    ) as (fake, service):
        alice, bob = fake.add_user(31, "Alice"), fake.add_user(32, "Bob")
        fake.send_text(alice, fake.private_chat(alice), "long one " * 10)
        await fake.wait_for(lambda: fake.bot_texts(31))
        bob_chat = fake.private_chat(bob)
        for question in ("q1", "q2", "q3"):
            fake.send_text(bob, bob_chat, question)
        await fake.wait_for(lambda: any("already have 2 questions waiting" in t for t in fake.bot_texts(32)))
        await fake.wait_for(lambda: "answer to q2" in fake.bot_texts(32), timeout=20)
    texts = fake.bot_texts(32)
    assert texts.index("answer to q1") < texts.index("answer to q2")  # in the order asked
    assert sum("already have" in t for t in texts) == 1


# -- Discord --------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def discord_bot(tmp_path, reply, *, grace_s=0.0, edit_interval_s=0.2, **core):
    fake = FakeDiscord()
    await fake.start()
    service = make_service(tmp_path, reply, **core)
    await service.start()
    settings = DiscordSettings(
        _env_file=None, token=fake.token, api_base_url=fake.api_base_url, gateway_url=fake.gateway_url,
        edit_interval_s=edit_interval_s, shutdown_grace_s=grace_s,
    )  # fmt: skip
    client = LorabotClient(service, settings, guild_ready_timeout=0.05)
    task = asyncio.create_task(run_discord(service, settings, client=client))
    try:
        await asyncio.wait_for(client.wait_until_ready(), 10)
        yield fake, client, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        await service.close(drain_timeout_s=1)
        await fake.close()


async def test_a_global_429_while_typing_does_not_stall_the_bot(tmp_path):
    """discord.py closes a process-wide gate while it sleeps out a *global* 429. A reply that ended
    meanwhile used to cancel its typing request mid-sleep, leaving the gate shut: every later call
    of the bot waited forever (issue 9's stall). Requests now finish even when their reply is done."""
    async with discord_bot(tmp_path, "hi") as (fake, client, _):
        fake.fail_next("POST", r"/typing$", status=429, retry_after=1.0, is_global=True)
        first = await fake.user_message("one", mention_bot=True)
        await fake.wait_until(lambda: fake.replies_to(first["id"]))
        await client.wait_idle()  # the reply ended while discord.py still sleeps out the 429
        second = await fake.user_message("two", mention_bot=True)
        replies = await fake.wait_until(lambda: fake.replies_to(second["id"]), timeout=15)
        assert replies[0]["content"] == "hi"


async def test_many_channels_at_once_stay_within_the_global_limit(tmp_path):
    """30 channels at once: every reply arrives and the bot never hits Discord's global 50/s."""
    async with discord_bot(
        tmp_path, "word " * 30, token_delay_s=0.002, parallel=4, rate_limit_messages=100
    ) as (
        fake,
        client,
        _,
    ):
        channels = [FakeDiscord.CHANNEL_ID + 1000 + i for i in range(30)]
        for number, channel_id in enumerate(channels):  # a channel each, announced as Discord does
            await fake.dispatch(
                "CHANNEL_CREATE", dict(fake._channel(channel_id), name=f"c{number}", position=5 + number)
            )
        await fake.wait_until(lambda: all(client.get_channel(c) for c in channels))
        sent = [
            await fake.user_message(f"q{i}", mention_bot=True, user_id=600 + i, channel_id=channel_id)
            for i, channel_id in enumerate(channels)
        ]
        await fake.wait_until(
            lambda: all(fake.replies_to(m["id"])
                        and fake.replies_to(m["id"])[0]["content"].strip() == ("word " * 30).strip()
                        for m in sent),
            timeout=60,
        )  # fmt: skip
    assert not [c for c in fake.calls if c.status == 429]


async def test_shutdown_is_bounded_when_discord_is_gone(tmp_path):
    async with discord_bot(tmp_path, "slow " * 400, token_delay_s=0.02, grace_s=1.0) as (fake, client, task):
        message = await fake.user_message("go", mention_bot=True)
        await fake.wait_until(lambda: fake.replies_to(message["id"]))
        await fake.close()  # Discord unreachable from now on
        started = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        # grace (1 s) + the interruption note's bound (5 s) + logging out (5 s) + slack
        assert time.monotonic() - started < 1 + 5 + 5 + 3
        assert client.is_closed()
