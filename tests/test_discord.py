"""The Discord adapter end to end: the real discord.py client against a fake Discord on loopback.

The fake (bench/fakes/discord.py) speaks Discord's REST and gateway protocol and records every call,
so each test asserts on what Discord itself would have received.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading

import pytest

from bench.fakes.discord import EVERYDAY_PERMISSIONS, MANAGE_GUILD, FakeDiscord
from bots.discord_bot import DiscordSettings, load_discord_settings, run_discord
from bots.discord_bot.client import LorabotClient
from bots.discord_bot.policy import Origin, channel_scope, conversation_id, is_allowed, model_scopes
from bots.discord_bot.sink import INTERRUPTED
from core.settings import SettingsError
from support.engines import make_service

EDIT_INTERVAL_S = 0.05
NO_PINGS = {"parse": []}


def settings_for(fake: FakeDiscord, **overrides) -> DiscordSettings:
    """Settings pointing discord.py at the fake (no .env), fast edits unless overridden."""
    return DiscordSettings(
        _env_file=None,
        token=fake.token,
        api_base_url=fake.api_base_url,
        gateway_url=fake.gateway_url,
        **{"edit_interval_s": EDIT_INTERVAL_S, **overrides},
    )


@pytest.fixture
async def fake():
    server = FakeDiscord()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def start_bot(fake, tmp_path):
    """Start the bot (run_discord) on a scripted ChatService; returns the discord.py client.

    `start_bot.tasks[client]` is the task running `run_discord` (cancel it to shut down).
    """
    running: list[tuple[asyncio.Task, object]] = []

    async def start(
        reply="Hello from the scripted engine.", *, models=None, token_delay_s=0.0, core=None, **discord
    ):
        service = make_service(tmp_path, reply, models=models, token_delay_s=token_delay_s, **(core or {}))
        await service.start()
        settings = settings_for(fake, **discord)
        client = LorabotClient(service, settings, guild_ready_timeout=0.05)
        task = asyncio.create_task(run_discord(service, settings, client=client))
        running.append((task, service))
        start.tasks[client] = task
        done, _ = await asyncio.wait(
            [task, asyncio.ensure_future(client.wait_until_ready())],
            timeout=10,
            return_when=asyncio.FIRST_COMPLETED,
        )
        assert task not in done, task.exception() if task.done() else "bot did not start"
        assert client.is_ready()
        return client

    start.tasks = {}
    yield start
    for task, service in running:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await service.close()
    assert fake.unexpected_errors() == [], "the bot sent requests Discord would refuse"


async def answer(fake: FakeDiscord, client: LorabotClient, message: dict) -> list[dict]:
    """Wait for the bot's whole answer to `message`; returns its messages (reply first)."""
    reply = (await fake.wait_until(lambda: fake.replies_to(message["id"])))[0]
    await client.wait_idle()
    return [m for m in fake.bot_messages(int(reply["channel_id"])) if int(m["id"]) >= int(reply["id"])]


def sent_payloads(fake: FakeDiscord) -> list[dict]:
    """Every message body the bot sent or edited (channel messages, callbacks, webhooks)."""
    bodies = []
    for call in fake.calls:
        if (
            call.method in ("POST", "PATCH")
            and re.search(r"/messages|/webhooks/|/callback", call.path)
            and call.json
        ):
            body = call.json.get("data", call.json) if "/callback" in call.path else call.json
            if "content" in body:
                bodies.append(body)
    return bodies


# ---- chatting ------------------------------------------------------------------------


async def test_mention_gets_a_streamed_reply_that_ends_with_the_engines_text(fake, start_bot):
    text = "Streaming works: " + " ".join(f"word{i}" for i in range(40)) + "."
    client = await start_bot(text, token_delay_s=0.01)

    await fake.user_message("not for the bot")  # no mention: ignored
    message = await fake.user_message("tell me something", mention_bot=True)
    messages = await answer(fake, client, message)

    assert [m["content"] for m in messages] == [text]
    reply_id = messages[0]["id"]
    created = fake.find("POST", r"^/channels/\d+/messages$")
    edits = fake.find("PATCH", rf"/messages/{reply_id}$")
    assert len(created) == 1  # only the reply: the bot ignored the plain message and its own echo
    assert created[0].json["content"] != text and text.startswith(created[0].json["content"].strip())
    assert len(edits) >= 2, "the reply should grow through several edits"
    assert edits[-1].json["content"] == text
    assert fake.find("POST", r"/channels/\d+/typing"), "typing indicator while generating"
    assert created[0].json["message_reference"]["message_id"] == int(message["id"])
    assert fake.identify["intents"] & (1 << 15), "message content intent requested"


async def test_edits_are_throttled_to_the_edit_interval(fake, start_bot):
    """The reply grows for ~1.2 s: several in-between edits, each at least the interval apart."""
    client = await start_bot(" ".join(["tick"] * 60), token_delay_s=0.02, edit_interval_s=0.2)
    message = await fake.user_message("go", mention_bot=True)
    reply = (await answer(fake, client, message))[0]
    edits = fake.find("PATCH", rf"/messages/{reply['id']}$")
    times = [c.at for c in edits[:-1]]  # the final edit may follow the last one immediately
    assert len(times) >= 2, f"expected in-between edits to compare, got {len(edits)} edits in all"
    assert all(b - a >= 0.19 for a, b in zip(times, times[1:], strict=False))


async def test_dm_is_answered_without_mention(fake, start_bot):
    client = await start_bot("Hi in private.")
    message = await fake.user_message("hello", guild=False, user_id=42)
    messages = await answer(fake, client, message)
    assert [m["content"] for m in messages] == ["Hi in private."]
    assert int(messages[0]["channel_id"]) == fake.dm_channel_id(42)


async def test_dms_can_be_turned_off(fake, start_bot):
    client = await start_bot("Hi.", allow_dms=False)
    ignored = await fake.user_message("hello", guild=False, user_id=42)
    message = await fake.user_message("and here?", mention_bot=True)
    await answer(fake, client, message)
    assert fake.replies_to(ignored["id"]) == []
    assert not fake.find("POST", rf"/channels/{fake.dm_channel_id(42)}/")


async def test_thread_started_by_the_bot_is_answered_without_mention(fake, start_bot):
    client = await start_bot("Thread answer.")
    message = await fake.user_message("follow-up", channel_id=FakeDiscord.BOT_THREAD_ID)
    messages = await answer(fake, client, message)
    assert [m["content"] for m in messages] == ["Thread answer."]
    assert int(messages[0]["channel_id"]) == FakeDiscord.BOT_THREAD_ID


async def test_reply_in_thread_starts_a_thread_where_follow_ups_need_no_mention(fake, start_bot):
    client = await start_bot(lambda request: f"{len(request.messages)} messages", reply_in_thread=True)
    message = await fake.user_message("What is a LoRA?\nexplain briefly", mention_bot=True)
    created = await fake.wait_until(lambda: fake.find("POST", rf"/messages/{message['id']}/threads$"))
    assert created[0].json["name"] == "What is a LoRA?"
    thread_id = int(message["id"])
    first = (await fake.wait_until(lambda: fake.bot_messages(thread_id)))[0]
    await client.wait_idle()
    assert fake.messages[int(first["id"])]["content"] == "2 messages"
    follow_up = await fake.user_message("and why?", channel_id=thread_id)  # no mention
    await fake.wait_until(lambda: len(fake.bot_messages(thread_id)) == 2)
    await client.wait_idle()
    assert fake.bot_messages(thread_id)[1]["content"] == "4 messages"  # same conversation
    assert fake.replies_to(follow_up["id"])


async def test_reply_in_thread_falls_back_to_inline_without_thread_permission(fake, start_bot):
    client = await start_bot("inline answer", reply_in_thread=True)
    fake.fail_next("POST", r"/threads$", status=403)
    message = await fake.user_message("hi", mention_bot=True)
    assert (await answer(fake, client, message))[0]["content"] == "inline answer"


async def test_reply_to_the_bot_and_mention_of_its_role_address_it(fake, start_bot):
    client = await start_bot(lambda request: f"got: {request.messages[-1]['content']}")
    first = await fake.user_message("first", mention_bot=True)
    bot_reply = (await answer(fake, client, first))[0]
    follow_up = await fake.user_message("second", reply_to=bot_reply)  # reply with ping off: no mention
    assert (await answer(fake, client, follow_up))[0]["content"] == "got: second"
    by_role = await fake.user_message("third", mention_bot_role=True)
    assert (await answer(fake, client, by_role))[0]["content"] == "got: third"
    ignored = await fake.user_message("fourth", reply_to=follow_up)  # a reply to a human
    last = await fake.user_message("fifth", mention_bot=True)
    await answer(fake, client, last)
    assert fake.replies_to(ignored["id"]) == []


async def test_without_message_content_intent_blank_messages_are_not_answered(fake, start_bot):
    client = await start_bot("answer", message_content_intent=False)
    assert not fake.identify["intents"] & (1 << 15)
    blank = await fake.user_message("", channel_id=FakeDiscord.BOT_THREAD_ID)  # what Discord delivers
    message = await fake.user_message("hi", mention_bot=True, channel_id=FakeDiscord.BOT_THREAD_ID)
    assert (await answer(fake, client, message))[0]["content"] == "answer"
    assert fake.replies_to(blank["id"]) == []
    bare = await fake.user_message("", mention_bot=True)  # a bare mention gets a hint
    assert "empty" in (await answer(fake, client, bare))[0]["content"]


async def test_other_bots_are_ignored(fake, start_bot):
    client = await start_bot("Hi.")
    from_bot = await fake.user_message("hey", mention_bot=True, user_id=55, bot_author=True)
    message = await fake.user_message("hey", mention_bot=True)
    await answer(fake, client, message)
    assert fake.replies_to(from_bot["id"]) == []


async def test_prompt_has_readable_names_instead_of_mention_markup(fake, start_bot):
    client = await start_bot(lambda request: request.messages[-1]["content"])
    fake.add_user(61, "alice")
    message = await fake.user_message(
        f"say hi to <@61> in <#{FakeDiscord.OTHER_CHANNEL_ID}>", mention_bot=True, mentions=[61]
    )
    assert (await answer(fake, client, message))[0]["content"] == "say hi to @alice in #other"


async def test_conversation_history_is_per_user_in_a_channel(fake, start_bot):
    client = await start_bot(lambda request: f"I saw {len(request.messages)} messages.")
    first = await fake.user_message("one", mention_bot=True, user_id=1)
    assert (await answer(fake, client, first))[0]["content"] == "I saw 2 messages."  # system + user
    again = await fake.user_message("two", mention_bot=True, user_id=1)
    assert (await answer(fake, client, again))[0]["content"] == "I saw 4 messages."
    other = await fake.user_message("three", mention_bot=True, user_id=2)
    assert (await answer(fake, client, other))[0]["content"] == "I saw 2 messages."


# ---- slash commands ------------------------------------------------------------------


async def test_chat_command_streams_into_the_interaction_response(fake, start_bot):
    text = "Answer via slash: " + " ".join(f"w{i}" for i in range(30))
    client = await start_bot(text, token_delay_s=0.01)
    token = await fake.slash("chat", {"prompt": "hello"})
    await fake.wait_until(lambda: any(m["content"] == text for m in fake.interaction_messages(token)))
    await client.wait_idle()
    assert fake.callbacks[0]["type"] == 5  # deferred: "lorabot is thinking…"
    assert [m["content"] for m in fake.interaction_messages(token)] == [text]
    edits = fake.find("PATCH", rf"/webhooks/\d+/{token}/messages/@original")
    assert len(edits) >= 2 and edits[-1].json["content"] == text


async def test_model_autocomplete_switch_and_next_reply_uses_new_model(fake, start_bot):
    client = await start_bot("from the default model", models={"tiny-pirate": "Arr, from the pirate model"})

    await fake.slash("model", {"name": "pir"}, autocomplete="name")
    choices = (await fake.wait_until(lambda: [c for c in fake.callbacks if c["type"] == 8]))[0]["data"][
        "choices"
    ]
    assert [c["value"] for c in choices] == ["tiny-pirate"]

    token = await fake.slash("model", {})
    listing = (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]["content"]
    assert "smollm2-135m" in listing and "tiny-pirate" in listing

    token = await fake.slash("model", {"name": "tiny-pirate"})
    confirm = (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]["content"]
    assert "tiny-pirate" in confirm

    message = await fake.user_message("hello", mention_bot=True)
    assert (await answer(fake, client, message))[0]["content"] == "Arr, from the pirate model"
    # the switch is the caller's conversation: another member here keeps the default, so does another channel
    message = await fake.user_message("hello", mention_bot=True, user_id=6)
    assert (await answer(fake, client, message))[0]["content"] == "from the default model"
    message = await fake.user_message("hello", mention_bot=True, channel_id=fake.OTHER_CHANNEL_ID)
    assert (await answer(fake, client, message))[0]["content"] == "from the default model"


async def test_unknown_model_is_reported(fake, start_bot):
    await start_bot("hi")
    token = await fake.slash("model", {"name": "nope"})
    text = (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]["content"]
    assert "Unknown model" in text and "smollm2-135m" in text


async def test_model_default_refused_for_non_admin_allowed_for_manage_server(fake, start_bot):
    client = await start_bot("default says hi", models={"other": "other says hi"})

    token = await fake.slash("model-default", {"name": "other"}, user_id=5, permissions=EVERYDAY_PERMISSIONS)
    refusal = (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]
    assert "Manage Server" in refusal["content"] and refusal["flags"] & 64  # ephemeral
    message = await fake.user_message("hi", mention_bot=True, user_id=6)
    assert (await answer(fake, client, message))[0]["content"] == "default says hi"

    token = await fake.slash(
        "model-default", {"name": "other"}, user_id=5, permissions=EVERYDAY_PERMISSIONS | MANAGE_GUILD
    )
    await fake.wait_until(lambda: fake.interaction_messages(token))
    message = await fake.user_message("hi", mention_bot=True, user_id=7)
    assert (await answer(fake, client, message))[0]["content"] == "other says hi"


async def test_model_default_allowed_for_configured_admin_id(fake, start_bot):
    client = await start_bot("default", models={"other": "other"}, admin_ids="5, 77")
    token = await fake.slash("model-default", {"name": "other"}, user_id=77)
    assert "now" in (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]["content"]
    message = await fake.user_message("hi", mention_bot=True, user_id=8)
    assert (await answer(fake, client, message))[0]["content"] == "other"
    token = await fake.slash("model-default", {"name": "other"}, user_id=77, guild=False)
    assert (
        "works in a server" in (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]["content"]
    )


async def test_reset_help_and_stats(fake, start_bot):
    client = await start_bot(lambda request: f"{len(request.messages)} messages")
    first = await fake.user_message("one", mention_bot=True)
    await answer(fake, client, first)
    token = await fake.slash("reset", {})
    assert (
        "Forgot this conversation"
        in (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]["content"]
    )
    again = await fake.user_message("two", mention_bot=True)
    assert (await answer(fake, client, again))[0]["content"] == "2 messages"

    token = await fake.slash("help", {})
    assert "/chat" in (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]["content"]
    token = await fake.slash("stats", {})
    stats = (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]["content"]
    assert "0 running, 0 waiting" in stats and "smollm2-135m" in stats and "tokens/s" in stats


async def test_commands_are_synced_on_start(fake, start_bot):
    await start_bot()
    assert fake.find("PUT", r"^/applications/\d+/commands$")
    assert {c["name"] for c in fake.commands} == {
        "chat",
        "model",
        "model-default",
        "persona",
        "reset",
        "help",
        "stats",
        "temperature",
        "forget",
        "feedback",
    }
    assert fake.identify["token"] == fake.token and fake.heartbeats >= 1  # gateway handshake done


# ---- long replies, rate limits, mentions ---------------------------------------------


async def test_4500_character_reply_is_split_into_three_messages(fake, start_bot):
    paragraphs = [f"Paragraph {i}. " + "This sentence pads the paragraph out nicely. " * 9 for i in range(11)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    assert 4400 <= len(text) <= 4700
    client = await start_bot(text)
    message = await fake.user_message("long please", mention_bot=True)
    messages = await answer(fake, client, message)
    assert len(messages) == 3
    assert all(len(m["content"]) <= 2000 for m in messages)
    assert all(m["content"].endswith(".") for m in messages)  # cut at paragraph/sentence ends
    assert "\n\n".join(m["content"] for m in messages) == text


async def test_long_chat_command_answer_continues_in_follow_ups(fake, start_bot):
    text = "\n\n".join((f"Part {i}. " + "Words to fill the part up. " * 30).strip() for i in range(5))
    client = await start_bot(text)
    token = await fake.slash("chat", {"prompt": "long"})
    await fake.wait_until(lambda: len(fake.interaction_messages(token)) == 3)
    await client.wait_idle()
    messages = fake.interaction_messages(token)
    assert len(fake.find("POST", rf"^/webhooks/\d+/{token}$")) == 2  # follow-ups
    assert "\n\n".join(m["content"] for m in messages) == text


async def test_429_on_an_edit_is_retried_after_retry_after_and_no_text_is_lost(fake, start_bot):
    text = "Rate limits " + " ".join(f"t{i}" for i in range(50)) + " end."
    client = await start_bot(text, token_delay_s=0.01)
    fake.fail_next("PATCH", r"^/channels/\d+/messages/\d+$", status=429, retry_after=0.3)
    message = await fake.user_message("go", mention_bot=True)
    messages = await answer(fake, client, message)

    assert [m["content"] for m in messages] == [text]
    edits = fake.find("PATCH", r"^/channels/\d+/messages/\d+$")
    limited = [i for i, call in enumerate(edits) if call.status == 429]
    assert len(limited) == 1, "the fake's 429 was really served"
    refused, retried = edits[limited[0]], edits[limited[0] + 1]
    assert retried.status == 200 and retried.json["content"] == refused.json["content"]
    assert retried.at - refused.at >= 0.3, "retry_after was honoured"
    assert edits[-1].json["content"] == text


async def test_429s_that_discord_py_gives_up_on_still_end_with_the_full_text(fake, start_bot):
    """discord.py retries a 429 five times; after that the reply view waits (SlowDown) and catches up."""
    text = "Persistent limits " + " ".join(f"p{i}" for i in range(30)) + " end."
    client = await start_bot(text, token_delay_s=0.01)
    fake.fail_next("PATCH", r"^/channels/\d+/messages/\d+$", status=429, retry_after=0.01, times=5)
    message = await fake.user_message("go", mention_bot=True)
    messages = await answer(fake, client, message)
    assert [m["content"] for m in messages] == [text]
    statuses = [c.status for c in fake.find("PATCH", r"^/channels/\d+/messages/\d+$")]
    assert statuses[:5] == [429] * 5 and statuses[-1] == 200


async def test_429_on_a_chat_command_edit_is_retried_and_no_text_is_lost(fake, start_bot):
    text = "Slash limits " + " ".join(f"s{i}" for i in range(40)) + " end."
    client = await start_bot(text, token_delay_s=0.01)
    fake.fail_next("PATCH", r"^/webhooks/\d+/[^/]+/messages/@original$", status=429, retry_after=0.2)
    token = await fake.slash("chat", {"prompt": "go"})
    await fake.wait_until(lambda: any(m["content"] == text for m in fake.interaction_messages(token)))
    await client.wait_idle()
    edits = fake.find("PATCH", rf"/webhooks/\d+/{token}/messages/@original$")
    limited = next(i for i, call in enumerate(edits) if call.status == 429)
    assert edits[limited + 1].json["content"] == edits[limited].json["content"]
    assert edits[limited + 1].at - edits[limited].at >= 0.2
    assert [m["content"] for m in fake.interaction_messages(token)] == [text]


async def test_429_on_the_first_send_is_retried(fake, start_bot):
    client = await start_bot("Still delivered.")
    fake.fail_next("POST", r"^/channels/\d+/messages$", status=429, retry_after=0.2)
    message = await fake.user_message("go", mention_bot=True)
    assert [m["content"] for m in await answer(fake, client, message)] == ["Still delivered."]
    assert [c.status for c in fake.find("POST", r"^/channels/\d+/messages$")] == [429, 200]


async def test_model_output_with_mentions_pings_nobody(fake, start_bot):
    text = f"@everyone @here <@&{FakeDiscord.MOD_ROLE_ID}> <@{FakeDiscord.OWNER_ID}> look!"
    client = await start_bot(text)
    message = await fake.user_message("ping them", mention_bot=True)
    assert (await answer(fake, client, message))[0]["content"] == text
    token = await fake.slash("chat", {"prompt": "again"})
    await fake.wait_until(lambda: any(m["content"] == text for m in fake.interaction_messages(token)))
    await client.wait_idle()

    payloads = sent_payloads(fake)
    assert len(payloads) >= 2  # the channel reply and the interaction's
    for body in payloads:
        mentions = body.get("allowed_mentions")
        assert mentions is not None, body
        assert mentions["parse"] == [] and not mentions.get("users") and not mentions.get("roles")
        assert not mentions.get("replied_user")


async def test_no_permission_to_post_is_logged_not_fatal(fake, start_bot, caplog):
    client = await start_bot("hi")
    fake.fail_next("POST", r"^/channels/\d+/messages$", status=403)
    refused = await fake.user_message("one", mention_bot=True)
    await fake.wait_until(lambda: fake.find("POST", r"^/channels/\d+/messages$"))
    await client.wait_idle()
    assert "can't answer in discord:" in caplog.text
    message = await fake.user_message("two", mention_bot=True)
    assert (await answer(fake, client, message))[0]["content"] == "hi"
    assert fake.replies_to(refused["id"]) == []


# ---- access --------------------------------------------------------------------------


async def test_denied_user_is_ignored(fake, start_bot):
    client = await start_bot("hi", denied_user_ids="13")
    denied = await fake.user_message("hello", mention_bot=True, user_id=13)
    allowed = await fake.user_message("hello", mention_bot=True, user_id=14)
    await answer(fake, client, allowed)
    assert fake.replies_to(denied["id"]) == []
    token = await fake.slash("chat", {"prompt": "hi"}, user_id=13)
    refusal = (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]
    assert "can't use lorabot" in refusal["content"] and refusal["flags"] & 64


async def test_role_and_channel_lists(fake, start_bot):
    client = await start_bot(
        "hi",
        allowed_role_ids=str(FakeDiscord.MEMBER_ROLE_ID),
        denied_channel_ids=str(FakeDiscord.OTHER_CHANNEL_ID),
    )
    no_role = await fake.user_message("hello", mention_bot=True, user_id=21)
    wrong_channel = await fake.user_message(
        "hello",
        mention_bot=True,
        user_id=22,
        roles=[FakeDiscord.MEMBER_ROLE_ID],
        channel_id=FakeDiscord.OTHER_CHANNEL_ID,
    )
    allowed = await fake.user_message(
        "hello", mention_bot=True, user_id=23, roles=[FakeDiscord.MEMBER_ROLE_ID]
    )
    await answer(fake, client, allowed)
    assert fake.replies_to(no_role["id"]) == [] and fake.replies_to(wrong_channel["id"]) == []


@pytest.mark.parametrize(
    ("settings", "origin", "allowed"),
    [
        ({}, Origin(1, 10, 100), True),
        ({"denied_user_ids": "1"}, Origin(1, 10, 100), False),
        ({"allowed_user_ids": "2"}, Origin(1, 10, 100), False),
        ({"allowed_guild_ids": "100"}, Origin(1, 10, 100), True),
        ({"allowed_guild_ids": "100"}, Origin(1, 10, 101), False),
        ({"denied_guild_ids": "100"}, Origin(1, 10, 100), False),
        (
            {"allowed_channel_ids": "10"},
            Origin(1, 99, 100, parent_channel_id=10),
            True,
        ),  # thread in allowed channel
        ({"denied_channel_ids": "10"}, Origin(1, 99, 100, parent_channel_id=10), False),
        ({"allowed_role_ids": "5"}, Origin(1, 10, 100, role_ids=frozenset({5})), True),
        (
            {"allowed_role_ids": "5", "denied_role_ids": "6"},
            Origin(1, 10, 100, role_ids=frozenset({5, 6})),
            False,
        ),
        ({"allowed_guild_ids": "100"}, Origin(1, 10, None), False),  # a DM would bypass the server list
        ({"allow_dms": False}, Origin(1, 10, None), False),
    ],
)
def test_access_rules(settings, origin, allowed):
    assert is_allowed(DiscordSettings(_env_file=None, **settings), origin) is allowed


# ---- load and errors -----------------------------------------------------------------


async def test_queue_full_gets_a_busy_message(fake, start_bot):
    gate = threading.Event()  # holds the first reply in the engine until the queue is full

    def reply(request):
        gate.wait(10)
        return f"answer to {request.messages[-1]['content']}"

    client = await start_bot(reply, core={"queue_max": 1, "parallel": 1})
    try:
        running = await fake.user_message("first", mention_bot=True, user_id=31)
        await fake.wait_until(lambda: client.service.stats().running == 1)
        waiting = await fake.user_message("second", mention_bot=True, user_id=32)
        await fake.wait_until(lambda: fake.replies_to(waiting["id"]))
        assert fake.replies_to(waiting["id"])[0]["content"].startswith("⏳ Waiting in line: #1")
        rejected = await fake.user_message("third", mention_bot=True, user_id=33)
        busy = (await fake.wait_until(lambda: fake.replies_to(rejected["id"])))[0]
        assert "busy" in busy["content"]
    finally:
        gate.set()
    await client.wait_idle()
    assert fake.replies_to(running["id"])[0]["content"] == "answer to first"
    assert fake.replies_to(waiting["id"])[0]["content"] == "answer to second"  # status replaced


async def test_rate_limited_user_gets_a_polite_message(fake, start_bot):
    client = await start_bot("ok", core={"rate_limit_messages": 1, "rate_limit_period_s": 60})
    first = await fake.user_message("one", mention_bot=True)
    await answer(fake, client, first)
    second = await fake.user_message("two", mention_bot=True)
    assert "too fast" in (await answer(fake, client, second))[0]["content"]


async def test_model_that_fails_to_load_is_reported_in_the_channel(fake, start_bot):
    client = await start_bot("fine", models={"broken": "never shown"})
    scripted = client.service.pool.factory

    def factory(entry, settings):
        if entry.name == "broken":
            raise OSError("not a GGUF file")
        return scripted(entry, settings)

    client.service.pool.factory = factory
    token = await fake.slash("model", {"name": "broken"})
    await fake.wait_until(lambda: fake.interaction_messages(token))
    message = await fake.user_message("hi", mention_bot=True)
    text = (await answer(fake, client, message))[0]["content"]
    assert text.startswith("⚠️") and "could not be loaded" in text and "broken" in text


async def test_generation_timeout_is_reported_in_the_channel(fake, start_bot):
    client = await start_bot("a b c d e f g h", token_delay_s=0.2, core={"generation_timeout_s": 0.3})
    message = await fake.user_message("slow", mention_bot=True)
    text = (await answer(fake, client, message))[0]["content"]
    assert "took longer" in text


async def test_twenty_users_mentioning_at_once_all_get_complete_replies(fake, start_bot):
    client = await start_bot(
        lambda request: f"Answer for {request.messages[-1]['content']}: " + "ok " * 19 + "done.",
        token_delay_s=0.001,
    )
    messages = await asyncio.gather(
        *(fake.user_message(f"user {i}", mention_bot=True, user_id=1000 + i) for i in range(20))
    )
    await fake.wait_until(lambda: all(fake.replies_to(m["id"]) for m in messages), timeout=30)
    await client.wait_idle()
    for i, message in enumerate(messages):
        replies = fake.replies_to(message["id"])
        assert len(replies) == 1
        assert replies[0]["content"] == f"Answer for user {i}: " + "ok " * 19 + "done."


# ---- lifecycle and settings ----------------------------------------------------------


async def test_gateway_disconnect_is_resumed_and_the_bot_keeps_answering(fake, start_bot):
    client = await start_bot("still here")
    await fake.drop_connections(code=4000)
    await fake.wait_until(lambda: fake.resumes and fake._sockets, timeout=15)
    message = await fake.user_message("you there?", mention_bot=True)
    assert (await answer(fake, client, message))[0]["content"] == "still here"
    assert fake.resumes[0]["token"] == fake.token


async def test_shutdown_marks_an_in_flight_reply_as_interrupted(fake, start_bot):
    client = await start_bot(" ".join(["long"] * 500), token_delay_s=0.01, shutdown_grace_s=0)
    message = await fake.user_message("go", mention_bot=True)
    await fake.wait_until(lambda: any("long" in m["content"] for m in fake.replies_to(message["id"])))
    start_bot.tasks[client].cancel()
    with pytest.raises(asyncio.CancelledError):
        await start_bot.tasks[client]
    reply = fake.replies_to(message["id"])[0]
    assert reply["content"].startswith("long") and reply["content"].endswith(INTERRUPTED)
    assert client.is_closed()


async def test_shutdown_while_a_message_is_being_sent_does_not_duplicate_it(fake, start_bot):
    client = await start_bot(" ".join(["long"] * 500), token_delay_s=0.01, shutdown_grace_s=0)
    fake.delay_next("POST", r"^/channels/\d+/messages$", 0.3)  # Discord created it, answer is slow
    message = await fake.user_message("go", mention_bot=True)
    await fake.wait_until(lambda: fake.replies_to(message["id"]))
    start_bot.tasks[client].cancel()
    with pytest.raises(asyncio.CancelledError):
        await start_bot.tasks[client]
    assert len(fake.bot_messages()) == 1
    assert fake.bot_messages()[0]["content"].endswith(INTERRUPTED)


async def test_shutdown_lets_an_in_flight_reply_finish_within_the_grace_period(fake, start_bot):
    text = " ".join(["word"] * 50)
    client = await start_bot(text, token_delay_s=0.01, shutdown_grace_s=5)
    message = await fake.user_message("go", mention_bot=True)
    await fake.wait_until(lambda: fake.replies_to(message["id"]))
    start_bot.tasks[client].cancel()
    with pytest.raises(asyncio.CancelledError):
        await start_bot.tasks[client]
    assert fake.replies_to(message["id"])[0]["content"] == text
    assert client.is_closed()


async def test_service_stopping_mid_reply_marks_it_interrupted(fake, start_bot):
    client = await start_bot(" ".join(["long"] * 300), token_delay_s=0.01)
    message = await fake.user_message("go", mention_bot=True)
    await fake.wait_until(lambda: any("long" in m["content"] for m in fake.replies_to(message["id"])))
    await client.service.close(drain_timeout_s=0)
    await client.wait_idle()
    reply = fake.replies_to(message["id"])[0]
    assert reply["content"].startswith("long") and reply["content"].endswith(INTERRUPTED)


async def test_token_is_never_logged(fake, start_bot, caplog):
    """The token travels with every request and the IDENTIFY; discord.py logs those at DEBUG.

    Asserting only that the token is absent would hold even if nothing were captured, so first
    check that the lines about those requests were captured, then that none has the token."""
    caplog.set_level(logging.DEBUG)
    client = await start_bot("hi")
    message = await fake.user_message("hello", mention_bot=True)
    await answer(fake, client, message)
    logged = [record.getMessage() for record in caplog.records]
    assert any("/users/@me" in line and "has returned 200" in line for line in logged), "REST log captured"
    assert any("sent the IDENTIFY payload" in line for line in logged), "gateway log captured"
    assert all(fake.token not in line for line in logged) and fake.token not in caplog.text
    assert fake.token not in repr(client.settings) and fake.token not in str(client.settings.model_dump())
    with pytest.raises(SettingsError) as error:
        load_discord_settings(_env_file=None, token=fake.token, edit_interval_s="soon")
    assert "DISCORD_EDIT_INTERVAL_S" in str(error.value) and fake.token not in str(error.value)


def test_settings_parse_id_lists_and_name_bad_values(monkeypatch):
    monkeypatch.setenv("DISCORD_ADMIN_IDS", "1, 2 3")
    monkeypatch.setenv("DISCORD_DENIED_ROLE_IDS", "[4, 5]")
    settings = load_discord_settings(_env_file=None)
    assert settings.admin_ids == {1, 2, 3} and settings.denied_role_ids == {4, 5}
    assert (
        settings.api_base_url == "https://discord.com/api/v10"
        and settings.gateway_url == "wss://gateway.discord.gg/"
    )
    assert not settings.enabled
    assert load_discord_settings(_env_file=None, token=" Bot abc.def ").token.get_secret_value() == "abc.def"
    monkeypatch.setenv("DISCORD_EDIT_INTERVAL_S", "soon")
    with pytest.raises(SettingsError, match="DISCORD_EDIT_INTERVAL_S"):
        load_discord_settings(_env_file=None)


async def test_missing_token_is_a_clear_error(tmp_path):
    service = make_service(tmp_path)
    with pytest.raises(SettingsError, match="DISCORD_TOKEN"):
        await run_discord(service, DiscordSettings(_env_file=None))


# ---- model scopes, DMs and mentions (issue 10) ----------------------------------------

MANAGE_CHANNELS = 1 << 4
EPHEMERAL = 64


async def said(fake: FakeDiscord, token: str) -> dict:
    """The bot's (first) answer to one slash command."""
    return (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]


async def answer_text(fake: FakeDiscord, client: LorabotClient, **message) -> str:
    sent = await fake.user_message("hi", mention_bot=True, **message)
    return (await answer(fake, client, sent))[0]["content"]


async def test_model_scopes_conversation_channel_and_server_each_with_its_permission(fake, start_bot):
    client = await start_bot(
        "default", models={"pirate": "Arr", "robot": "Beep", "owl": "Hoo"}, admin_ids="77"
    )
    other = {"channel_id": FakeDiscord.OTHER_CHANNEL_ID}

    # /model name: — anyone, for their own conversation in this channel only
    mine = await said(fake, await fake.slash("model", {"name": "pirate"}, user_id=5))
    assert "Model here is now pirate." in mine["content"] and mine["flags"] & EPHEMERAL
    assert await answer_text(fake, client, user_id=5) == "Arr"
    assert await answer_text(fake, client, user_id=6) == "default"  # other people here: unchanged
    assert await answer_text(fake, client, user_id=5, **other) == "default"  # other channels too

    # scope:channel — Manage Channels (or an admin id); the caller's own choice still wins
    refused = await said(fake, await fake.slash("model", {"name": "robot", "scope": "channel"}, user_id=6))
    assert "Manage Channels" in refused["content"] and refused["flags"] & EPHEMERAL
    assert await answer_text(fake, client, user_id=7) == "default"
    allowed = await said(
        fake,
        await fake.slash(
            "model",
            {"name": "robot", "scope": "channel"},
            user_id=6,
            permissions=EVERYDAY_PERMISSIONS | MANAGE_CHANNELS,
        ),
    )
    assert "The default model here is now robot" in allowed["content"] and not allowed["flags"] & EPHEMERAL
    assert await answer_text(fake, client, user_id=7) == "Beep"
    assert await answer_text(fake, client, user_id=5) == "Arr"
    assert await answer_text(fake, client, user_id=7, **other) == "default"

    # /model-default — Manage Server (or an admin id); a channel's choice wins over it
    refused = await said(fake, await fake.slash("model-default", {"name": "owl"}, user_id=8))
    assert "Manage Server" in refused["content"] and refused["flags"] & EPHEMERAL
    assert await answer_text(fake, client, user_id=9, **other) == "default"
    await said(
        fake,
        await fake.slash(
            "model-default", {"name": "owl"}, user_id=8, permissions=EVERYDAY_PERMISSIONS | MANAGE_GUILD
        ),
    )
    assert await answer_text(fake, client, user_id=9, **other) == "Hoo"
    assert await answer_text(fake, client, user_id=9) == "Beep"

    # a configured admin id may set a channel's model without Manage Channels
    admin = await said(fake, await fake.slash("model", {"name": "pirate", "scope": "channel"}, user_id=77))
    assert "The default model here is now pirate" in admin["content"]
    assert await answer_text(fake, client, user_id=10) == "Arr"

    # in a DM there is one conversation: scope:channel changes just that
    dm = await said(
        fake, await fake.slash("model", {"name": "owl", "scope": "channel"}, user_id=42, guild=False)
    )
    assert "Model here is now owl." in dm["content"]
    message = await fake.user_message("hello", guild=False, user_id=42)
    assert (await answer(fake, client, message))[0]["content"] == "Hoo"


async def test_help_and_command_descriptions_say_who_may_change_the_model_where(fake, start_bot):
    await start_bot()
    help_text = (await said(fake, await fake.slash("help", {})))["content"]
    for phrase in ("your conversation here only", "scope:channel", "Manage Channels", "Manage Server"):
        assert phrase in help_text
    assert "this conversation" not in help_text.split("/model-default")[0].split("`/model`")[-1]
    commands = {command["name"]: command for command in fake.commands}
    model_command = commands["model"]
    assert "your conversation" in model_command["description"]
    scope = next(option for option in model_command["options"] if option["name"] == "scope")
    assert [choice["value"] for choice in scope["choices"]] == ["conversation", "channel"]
    assert "Manage Channels" in scope["description"]
    assert "Manage Server" in commands["model-default"]["description"]


async def test_dms_are_refused_while_a_server_allow_list_is_set(fake, start_bot):
    client = await start_bot("hi", allowed_guild_ids=str(FakeDiscord.GUILD_ID), admin_ids="43")
    stranger = await fake.user_message("let me in", guild=False, user_id=42)
    token = await fake.slash("chat", {"prompt": "hi"}, user_id=42, guild=False)
    refusal = await said(fake, token)
    assert "can't use lorabot" in refusal["content"] and refusal["flags"] & EPHEMERAL
    admin = await fake.user_message("hello", guild=False, user_id=43)
    assert (await answer(fake, client, admin))[0]["content"] == "hi"  # answered after the stranger's DM
    assert await answer_text(fake, client, user_id=42) == "hi"  # the same user is welcome in the server
    assert fake.replies_to(stranger["id"]) == []
    assert not fake.find("POST", rf"/channels/{fake.dm_channel_id(42)}/")


async def test_open_dms_lets_anyone_dm_despite_a_server_allow_list(fake, start_bot):
    client = await start_bot("hi", allowed_guild_ids=str(FakeDiscord.GUILD_ID), open_dms=True)
    message = await fake.user_message("hello", guild=False, user_id=42)
    assert (await answer(fake, client, message))[0]["content"] == "hi"


@pytest.mark.parametrize(
    ("settings", "user", "allowed"),
    [
        ({}, 1, True),
        ({"allowed_guild_ids": "100"}, 1, False),
        ({"allowed_channel_ids": "10"}, 1, False),
        ({"allowed_role_ids": "5"}, 1, False),
        ({"allowed_guild_ids": "100", "allowed_user_ids": "1"}, 1, True),
        ({"allowed_guild_ids": "100", "admin_ids": "1"}, 1, True),
        ({"allowed_guild_ids": "100", "open_dms": True}, 1, True),
        ({"allowed_guild_ids": "100", "open_dms": True, "denied_user_ids": "1"}, 1, False),
        ({"open_dms": True, "allow_dms": False}, 1, False),
        ({"denied_guild_ids": "100"}, 1, True),  # deny lists name servers: a DM is in none
    ],
)
def test_dm_access_rules(settings, user, allowed):
    assert is_allowed(DiscordSettings(_env_file=None, **settings), Origin(user, 10, None)) is allowed


async def test_every_message_the_bot_sends_or_edits_pings_nobody(fake, start_bot):
    """Model output and echoed user input with @everyone, @here, role and user mentions."""
    pings = f"@everyone @here <@&{FakeDiscord.MOD_ROLE_ID}> <@{FakeDiscord.OWNER_ID}>"
    text = "\n\n".join(f"{pings} part {i}. " + "words " * 60 for i in range(8))  # ~3500 characters
    client = await start_bot(text, token_delay_s=0.001)
    message = await fake.user_message("ping them", mention_bot=True)
    assert len(await answer(fake, client, message)) >= 2  # continuation messages too
    dm = await fake.user_message("ping them", guild=False, user_id=42)
    await answer(fake, client, dm)
    token = await fake.slash("chat", {"prompt": "again"})
    await fake.wait_until(lambda: len(fake.interaction_messages(token)) >= 2)
    await client.wait_idle()
    unknown = await said(fake, await fake.slash("model", {"name": pings}))  # echoed in the error
    assert "@everyone" in unknown["content"]
    await said(fake, await fake.slash("help", {}))

    routes = set()
    for call in fake.calls:
        body = call.json if isinstance(call.json, dict) else {}
        body = body.get("data") or {} if "/callback" in call.path else body
        if call.method not in ("POST", "PATCH") or "content" not in body:
            continue
        routes.add(re.sub(r"\d+|itoken-\d+", "N", f"{call.method} {call.path}"))
        assert body.get("allowed_mentions") == {"parse": []} or body.get("allowed_mentions") == {
            "parse": [],
            "replied_user": False,
        }, (call.path, body)
    assert {
        "POST /channels/N/messages",  # replies, continuations, DMs
        "PATCH /channels/N/messages/N",  # streamed edits
        "POST /interactions/N/N/callback",  # command answers
        "PATCH /webhooks/N/N/messages/@original",  # /chat's streamed answer
        "POST /webhooks/N/N",  # /chat's continuation messages
    } <= routes, routes


def test_a_thread_follows_its_channels_model_and_keeps_its_own_conversation():
    thread = Origin(1, 99, 100, parent_channel_id=10)
    assert conversation_id(thread) == "discord:thread:99"  # `/model name:` there: shared by the thread
    assert channel_scope(thread) == "discord:channel:10"  # `scope:channel` there: the parent channel
    assert model_scopes(thread) == ("discord:channel:10", "discord:guild:100")
    assert model_scopes(Origin(1, 10, None)) == ("discord:channel:10",)  # a DM: no server
