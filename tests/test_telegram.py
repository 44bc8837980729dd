"""The Telegram adapter end to end: the real python-telegram-bot against a fake Bot API on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bench.fakes.telegram import BOT_USERNAME, FakeBotAPI, formatting_error, parse_entities
from bots.telegram_bot import TelegramSettings, load_telegram_settings, run_telegram
from bots.telegram_bot.sink import INTERRUPTED
from core.settings import SettingsError
from support.engines import make_service
from support.waiting import until

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning")

ALICE, BOB, CAROL = 111, 222, 333
GROUP = -1001234567890


@pytest.fixture
async def fake() -> AsyncIterator[FakeBotAPI]:
    server = FakeBotAPI()
    await server.start()
    server.alice = server.add_user(ALICE, "Alice", "alice_w")
    server.bob = server.add_user(BOB, "Bob", "bob_b")
    server.carol = server.add_user(CAROL, "Carol")
    yield server
    await server.stop()


def settings_for(fake: FakeBotAPI, **overrides) -> TelegramSettings:
    values = dict(
        token=fake.token,
        api_base_url=fake.base_url,
        file_base_url=fake.base_file_url,
        edit_interval_s=0.05,
        group_edit_interval_s=0.05,
        poll_timeout_s=1,
        _env_file=None,
    )
    values.update(overrides)
    return TelegramSettings(**values)


@contextlib.asynccontextmanager
async def running_bot(
    fake: FakeBotAPI,
    tmp_path,
    *,
    reply="Hello from the scripted engine.",
    settings: dict | None = None,
    **core,
) -> AsyncIterator:
    """Start ChatService + run_telegram against the fake; cancel like the CLI does afterwards."""
    service = make_service(tmp_path, reply=reply, **core)
    await service.start()
    task = asyncio.create_task(run_telegram(service, settings_for(fake, **(settings or {}))))
    try:
        await fake.wait_for(lambda: fake.calls_of("getUpdates") or fake.calls_of("setWebhook") or task.done())
        if task.done():
            task.result()
        yield service
        # let replies in flight finish: cancelling earlier would (rightly) mark them interrupted
        await fake.wait_for(lambda: service.scheduler.running == 0 and service.scheduler.waiting == 0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        await service.close(drain_timeout_s=1)


def reply_done(fake: FakeBotAPI, chat_id: int, expected: str):
    return lambda: fake.bot_texts(chat_id) and fake.bot_texts(chat_id)[-1] == expected


def seen_texts(fake: FakeBotAPI, chat_id: int) -> list[str]:
    """What the user sees in a chat: the bot's messages, then a draft (issue 28) if one shows."""
    return [text for _, text in fake.seen_by_user(chat_id)]


def keyboard_of(fake: FakeBotAPI, message: dict, prefix: str) -> bool:
    """A command's keyboard (`model:`…), not the 👍 👎 🔁 row every answer has."""
    return any(data.startswith(prefix) for data in fake.button_data(message))


def engine_requests(service) -> list:
    """What the (scripted) default model was asked, oldest first."""
    return service.engines[service.settings.default_model].requests


# -- scenarios of issue 4 --------------------------------------------------------------------------------
async def test_private_message_gets_streamed_reply_equal_to_engine_output(fake, tmp_path):
    """With TELEGRAM_DRAFTS off (drafts: the tests after issue 28's heading)."""
    output = "Paris is the capital of France. " * 6 + "It sits on the Seine."
    async with running_bot(fake, tmp_path, reply=output, token_delay_s=0.01, settings={"drafts": False}):
        chat = fake.private_chat(fake.alice)
        question = fake.send_text(fake.alice, chat, "What is the capital of France?")
        await fake.wait_for(reply_done(fake, ALICE, output.strip()))
    messages = fake.bot_messages(ALICE)
    assert len(messages) == 1
    assert messages[0]["text"] == output.strip()
    assert messages[0]["reply_to_message"]["message_id"] == question["message_id"]
    assert fake.calls_of("sendChatAction", chat_id=ALICE, action="typing"), "typing indicator"
    edits = fake.calls_of("editMessageText", chat_id=ALICE)
    assert len(edits) >= 2, "the reply grows by edits while tokens arrive"
    assert all("parse_mode" not in call.params for call in fake.calls_of("sendMessage") + edits)
    assert [c["command"] for c in fake.commands] == [
        "start",
        "help",
        "ask",
        "model",
        "persona",
        "reset",
        "temperature",
        "stats",
        "forget",
        "feedback",
    ]
    # the engine saw the question
    assert fake.calls_of("getMe") and fake.calls_of("deleteWebhook")


async def test_group_message_without_mention_is_ignored_with_mention_answered(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="Group answer.") as service:
        group = fake.group_chat(GROUP, "Study group")
        fake.send_text(fake.alice, group, "just chatting among humans")
        fake.send_text(fake.bob, group, "hey @someone_else look at this")
        # answered after the two above were handled: they reached neither the chat nor the model
        question = fake.send_text(fake.alice, group, f"@{BOT_USERNAME} what is 2+2?")
        await fake.wait_for(reply_done(fake, GROUP, "Group answer."))
        assert [m["reply_to_message"]["message_id"] for m in fake.bot_messages(GROUP)] == [
            question["message_id"]
        ]
        assert len(engine_requests(service)) == 1
        assert (
            service.engines[service.settings.default_model].requests[-1].messages[-1]["content"]
            == "what is 2+2?"
        )

        # replying to the bot's message also addresses it; /ask too
        bot_message = fake.bot_messages(GROUP)[-1]
        fake.send_text(fake.bob, group, "and why?", reply_to=bot_message)
        await fake.wait_for(
            lambda: len(fake.bot_texts(GROUP)) == 2 and fake.bot_texts(GROUP)[-1] == "Group answer."
        )
        fake.send_text(fake.carol, group, f"/ask@{BOT_USERNAME} tell me more")
        await fake.wait_for(
            lambda: len(fake.bot_texts(GROUP)) == 3 and fake.bot_texts(GROUP)[-1] == "Group answer."
        )
        assert (
            service.engines[service.settings.default_model].requests[-1].messages[-1]["content"]
            == "tell me more"
        )
        human = fake.send_text(fake.alice, group, "Is a tomato a fruit?")
        fake.send_text(fake.bob, group, "/ask", reply_to=human)
        await fake.wait_for(
            lambda: len(fake.bot_texts(GROUP)) == 4 and fake.bot_texts(GROUP)[-1] == "Group answer."
        )
        assert (
            service.engines[service.settings.default_model].requests[-1].messages[-1]["content"]
            == "Is a tomato a fruit?"
        )


async def test_model_keyboard_then_callback_switches_next_reply(fake, tmp_path):
    async with running_bot(
        fake, tmp_path, reply="from the default model", models={"tiny-b": "from model B"}
    ) as service:
        chat = fake.private_chat(fake.alice)
        fake.send_text(fake.alice, chat, "hi")
        await fake.wait_for(reply_done(fake, ALICE, "from the default model"))

        fake.send_text(fake.alice, chat, "/model")
        keyboard_message = await fake.wait_for(
            lambda: next((m for m in fake.bot_messages(ALICE) if keyboard_of(fake, m, "model:")), None)
        )
        buttons = [row[0] for row in keyboard_message["reply_markup"]["inline_keyboard"]]
        assert {b["callback_data"] for b in buttons} == {f"model:{n}" for n in service.model_names()}
        query_id = fake.press_button(fake.alice, keyboard_message, "model:tiny-b")
        await fake.wait_for(lambda: fake.calls_of("answerCallbackQuery", callback_query_id=query_id))
        assert "tiny-b" in fake.calls_of("answerCallbackQuery", callback_query_id=query_id)[0].params["text"]

        fake.send_text(fake.alice, chat, "hi again")
        await fake.wait_for(reply_done(fake, ALICE, "from model B"))
        assert await service.current_model(f"telegram:{ALICE}", f"telegram:{ALICE}") == "tiny-b"


async def test_non_admin_in_group_cannot_switch_model(fake, tmp_path):
    async with running_bot(
        fake,
        tmp_path,
        reply="default says hi",
        models={"tiny-b": "B says hi"},
        settings={"admin_ids": frozenset({CAROL})},
    ) as service:
        group = fake.group_chat(GROUP, "Club", admins={ALICE})
        fake.send_text(fake.bob, group, "/model")
        keyboard = await fake.wait_for(
            lambda: next((m for m in fake.bot_messages(GROUP) if keyboard_of(fake, m, "model:")), None)
        )
        denied = fake.press_button(fake.bob, keyboard, "model:tiny-b")
        await fake.wait_for(lambda: fake.calls_of("answerCallbackQuery", callback_query_id=denied))
        answer = fake.calls_of("answerCallbackQuery", callback_query_id=denied)[0].params
        assert "admin" in answer["text"].lower() and answer["show_alert"] is True
        assert fake.calls_of("getChatMember", chat_id=GROUP, user_id=BOB)
        assert (
            await service.current_model(f"telegram:{GROUP}", f"telegram:{GROUP}")
            == service.settings.default_model
        )

        fake.send_text(fake.bob, group, f"@{BOT_USERNAME} hello")
        await fake.wait_for(reply_done(fake, GROUP, "default says hi"))

        # a chat administrator may, and so may a configured admin id
        allowed = fake.press_button(fake.alice, keyboard, "model:tiny-b")
        await fake.wait_for(lambda: fake.calls_of("answerCallbackQuery", callback_query_id=allowed))
        assert await service.current_model(f"telegram:{GROUP}", f"telegram:{GROUP}") == "tiny-b"
        configured = fake.press_button(fake.carol, keyboard, f"model:{service.settings.default_model}")
        await fake.wait_for(lambda: fake.calls_of("answerCallbackQuery", callback_query_id=configured))
        assert (
            await service.current_model(f"telegram:{GROUP}", f"telegram:{GROUP}")
            == service.settings.default_model
        )


async def test_9000_character_reply_is_split_into_3_messages(fake, tmp_path):
    paragraph = ("word " * 99 + "end.").strip()  # 499 characters
    output = "\n\n".join([paragraph] * 18)  # 18*499 + 17*2 = 9016 characters
    assert 9000 <= len(output) <= 9100
    async with running_bot(fake, tmp_path, reply=output):
        chat = fake.private_chat(fake.alice)
        fake.send_text(fake.alice, chat, "write a lot")
        await fake.wait_for(
            lambda: (
                len(fake.bot_texts(ALICE)) == 3
                and "".join(fake.bot_texts(ALICE)).replace("\n", "") == output.replace("\n", "")
            )
        )
    texts = fake.bot_texts(ALICE)
    assert len(texts) == 3 and all(len(text) <= 4096 for text in texts)
    assert "\n\n".join(texts) == output
    assert all(call.status == 200 for call in fake.calls if call.method in ("sendMessage", "editMessageText"))


async def test_markup_characters_are_sent_without_errors(fake, tmp_path):
    output = (
        "Use *bold* and _italic_ like [this](http://x) ~strike~ `code` <b>not html</b> "
        "a < b && c > d, 2*3=6 (a_b) [1] {x} #tag + - = | . ! \\ <i unclosed & ```py\nx\n"
    )
    for mode in ("MarkdownV2", "Markdown", "HTML"):
        assert formatting_error(output, mode), f"the fake must reject this text with {mode}"
    async with running_bot(fake, tmp_path, reply=output):
        chat = fake.private_chat(fake.alice)
        fake.send_text(fake.alice, chat, "show me markdown")
        await fake.wait_for(reply_done(fake, ALICE, output.strip()))
    failed = [call for call in fake.calls if call.status != 200]
    assert failed == []
    assert all(not call.params.get("parse_mode") for call in fake.calls if "text" in call.params)


async def test_429_during_edits_is_honoured_and_no_text_is_lost(fake, tmp_path):
    output = " ".join(f"w{i}" for i in range(60))
    fake.rate_limit("editMessageText", retry_after=1, times=1)
    async with running_bot(fake, tmp_path, reply=output, token_delay_s=0.01, settings={"drafts": False}):
        chat = fake.private_chat(fake.alice)
        fake.send_text(fake.alice, chat, "go")
        await fake.wait_for(reply_done(fake, ALICE, output), timeout=15)
    edits = fake.calls_of("editMessageText", ok_only=False, chat_id=ALICE)
    limited = [call for call in edits if call.status == 429]
    assert len(limited) == 1
    after = [call for call in edits if call.at > limited[0].at]
    assert after, "the reply was completed after the flood wait"
    assert after[0].at - limited[0].at >= 0.95, "no edit before retry_after passed"
    assert fake.bot_texts(ALICE) == [output]


async def test_429_on_the_first_send_waits_and_retries(fake, tmp_path):
    fake.rate_limit("sendMessage", retry_after=1, times=1)
    async with running_bot(fake, tmp_path, reply="short answer"):
        chat = fake.private_chat(fake.alice)
        fake.send_text(fake.alice, chat, "go")
        await fake.wait_for(reply_done(fake, ALICE, "short answer"), timeout=10)
    sends = fake.calls_of("sendMessage", ok_only=False, chat_id=ALICE)
    assert [call.status for call in sends] == [429, 200]
    assert sends[1].at - sends[0].at >= 0.95


async def test_reset_forgets_the_conversation(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="noted") as service:
        chat = fake.private_chat(fake.alice)
        fake.send_text(fake.alice, chat, "my name is Alice")
        await fake.wait_for(reply_done(fake, ALICE, "noted"))
        fake.send_text(fake.alice, chat, "/reset")
        await fake.wait_for(lambda: any("Forgot" in text for text in fake.bot_texts(ALICE)))
        assert "(2 messages)" in fake.bot_texts(ALICE)[-1]
        fake.send_text(fake.alice, chat, "what is my name?")
        await fake.wait_for(lambda: fake.bot_texts(ALICE)[-1] == "noted" and len(fake.bot_texts(ALICE)) == 3)
        engine = service.engines[service.settings.default_model]
        contents = [m["content"] for m in engine.requests[-1].messages]
        assert "my name is Alice" not in contents
        assert f"telegram:{ALICE}" in engine.forgotten


async def test_queue_full_shows_busy_message(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="slow " * 40, token_delay_s=0.05, queue_max=1, parallel=1):
        for user in (fake.alice, fake.bob, fake.carol):
            fake.private_chat(user)
        fake.send_text(fake.alice, fake.chats[ALICE], "first (runs)")
        await fake.wait_for(lambda: seen_texts(fake, ALICE))
        fake.send_text(fake.bob, fake.chats[BOB], "second (waits)")
        await fake.wait_for(lambda: any("Waiting in line" in t for t in seen_texts(fake, BOB)))  # a draft
        fake.send_text(fake.carol, fake.chats[CAROL], "third (rejected)")
        await fake.wait_for(lambda: any("busy" in t.lower() for t in fake.bot_texts(CAROL)))
        assert fake.bot_texts(CAROL)[0].startswith("⚠️ I'm busy right now")
        await fake.wait_for(lambda: fake.bot_texts(BOB) == [("slow " * 40).strip()], timeout=15)


async def test_20_chats_at_once_get_20_complete_replies(fake, tmp_path):
    users = [fake.add_user(1000 + i, f"User{i}") for i in range(20)]
    async with running_bot(
        fake,
        tmp_path,
        reply=lambda request: "Answer to " + request.messages[-1]["content"],
        token_delay_s=0.01,
        rate_limit_messages=100,
    ):
        for user in users:
            fake.send_text(user, fake.private_chat(user), f"question {user['id']}")
        await fake.wait_for(
            lambda: all(fake.bot_texts(u["id"]) == [f"Answer to question {u['id']}"] for u in users),
            timeout=40,
        )
    assert all(call.status == 200 for call in fake.calls)
    # handled concurrently: later chats were told their place in the queue meanwhile
    calls = fake.calls_of("sendMessage") + fake.calls_of("sendMessageDraft")
    statuses = [c for c in calls if (c.params.get("text") or "").startswith("⏳ Waiting in line")]
    assert len({c.params["chat_id"] for c in statuses}) >= 10


# -- further behaviour named in the issue ------------------------------------------------------------
async def test_rate_limit_and_errors_are_shown_not_swallowed(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="ok", rate_limit_messages=1, rate_limit_period_s=60):
        chat = fake.private_chat(fake.alice)
        fake.send_text(fake.alice, chat, "one")
        await fake.wait_for(reply_done(fake, ALICE, "ok"))
        fake.send_text(fake.alice, chat, "two")
        await fake.wait_for(lambda: "too fast" in fake.bot_texts(ALICE)[-1])
        assert fake.bot_texts(ALICE)[-1].startswith("⚠️ You're sending messages too fast")


async def test_notice_about_trimmed_message_is_shown(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="ok", max_input_chars=100):
        fake.send_text(fake.alice, fake.private_chat(fake.alice), "x" * 150)
        await fake.wait_for(lambda: fake.bot_texts(ALICE) and fake.bot_texts(ALICE)[-1].endswith("\n\nok"))
        # the notice heads the reply itself: one message, no extra call
        assert fake.bot_texts(ALICE)[0].startswith("ℹ️ Your message was 150 characters long")
        assert len(fake.bot_texts(ALICE)) == 1


async def test_allow_lists(fake, tmp_path):
    settings = {"allowed_user_ids": frozenset({ALICE}), "allowed_chat_ids": frozenset({ALICE, GROUP})}
    async with running_bot(fake, tmp_path, reply="ok", settings=settings):
        fake.send_text(fake.bob, fake.private_chat(fake.bob), "let me in")
        await fake.wait_for(lambda: fake.bot_texts(BOB))
        assert fake.bot_texts(BOB) == ["Sorry, this bot is private."]
        other_group = fake.group_chat(-100999, "Elsewhere")
        fake.send_text(fake.alice, other_group, f"@{BOT_USERNAME} hi")
        fake.send_text(fake.bob, fake.group_chat(GROUP, "Allowed"), f"@{BOT_USERNAME} hi")
        fake.send_text(fake.alice, fake.private_chat(fake.alice), "hi")
        await fake.wait_for(reply_done(fake, ALICE, "ok"))  # sent after the two group messages
        assert fake.bot_texts(-100999) == [] and fake.bot_texts(GROUP) == []
        assert not [call for call in fake.calls if call.params.get("chat_id") in (-100999, GROUP)]


async def test_model_output_never_mentions_group_members(fake, tmp_path):
    """Replies are plain text: backticks are no code to Telegram, so mentions in "code" notify too."""
    output = (
        "Ask @alice_w or @bob_b (mail x@example.org); in code: `@alice_w` "
        "```py\n@dataclass\nclass A: ...\n``` and an unclosed ```\n@bob_b stays quiet"
    )
    async with running_bot(fake, tmp_path, reply=output):
        fake.send_text(fake.carol, fake.group_chat(GROUP, "Club"), f"@{BOT_USERNAME} who knows?")
        await fake.wait_for(lambda: fake.bot_texts(GROUP) and "stays quiet" in fake.bot_texts(GROUP)[-1])
        fake.send_text(fake.alice, fake.private_chat(fake.alice), "who knows?")
        await fake.wait_for(reply_done(fake, ALICE, output))  # private: nobody to notify, text as is
    shown = fake.bot_texts(GROUP)[-1]
    mentioned = [
        shown[e["offset"] : e["offset"] + e["length"]]
        for e in parse_entities(shown)
        if e["type"] == "mention"
    ]
    assert mentioned == []
    assert "x@example.org" in shown and "@\u2060dataclass" in shown and "`@\u2060alice_w`" in shown
    assert shown.replace("\u2060", "") == output


async def test_forum_topics_are_separate_conversations(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="topic reply") as service:
        group = fake.group_chat(GROUP, "Forum", forum=True)
        fake.send_text(fake.alice, group, f"@{BOT_USERNAME} in topic 5", thread_id=5)
        await fake.wait_for(reply_done(fake, GROUP, "topic reply"))
        assert fake.bot_messages(GROUP)[-1]["message_thread_id"] == 5
        engine = service.engines[service.settings.default_model]
        assert engine.requests[-1].conversation_id == f"telegram:{GROUP}:topic:5"


async def test_shutdown_marks_in_flight_reply_interrupted(fake, tmp_path):
    service = make_service(tmp_path, reply="tok " * 400, token_delay_s=0.02)
    await service.start()
    task = asyncio.create_task(run_telegram(service, settings_for(fake, shutdown_grace_s=0, drafts=False)))
    await fake.wait_for(lambda: fake.calls_of("getUpdates"))
    fake.send_text(fake.alice, fake.private_chat(fake.alice), "long please")
    await fake.wait_for(lambda: fake.bot_texts(ALICE))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    await service.close(drain_timeout_s=1)
    assert fake.bot_texts(ALICE)[-1].endswith(INTERRUPTED)


async def test_token_is_never_logged(fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with running_bot(fake, tmp_path, reply="ok"):
        fake.send_text(fake.alice, fake.private_chat(fake.alice), "hi")
        await fake.wait_for(reply_done(fake, ALICE, "ok"))
    secret = fake.token.split(":")[1]
    assert caplog.records
    assert secret not in caplog.text
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("TELEGRAM_TOKEN", "42:abc")
    monkeypatch.setenv("TELEGRAM_ADMIN_IDS", "1, 2")
    monkeypatch.setenv("TELEGRAM_ALLOWED_CHAT_IDS", "-100123 5")
    settings = load_telegram_settings(_env_file=None)
    assert settings.admin_ids == {1, 2} and settings.allowed_chat_ids == {-100123, 5}
    assert settings.api_base_url == "https://api.telegram.org/bot"
    assert "abc" not in repr(settings)
    monkeypatch.setenv("TELEGRAM_TOKEN", "nocolonsecret")
    monkeypatch.setenv("TELEGRAM_EDIT_INTERVAL_S", "-1")
    with pytest.raises(SettingsError) as error:
        load_telegram_settings(_env_file=None)
    assert "TELEGRAM_TOKEN" in str(error.value) and "TELEGRAM_EDIT_INTERVAL_S" in str(error.value)
    assert "nocolonsecret" not in str(error.value)


async def test_rejected_token_gives_a_clear_settings_error(fake, tmp_path):
    service = make_service(tmp_path)
    await service.start()
    try:
        with pytest.raises(SettingsError, match="TELEGRAM_TOKEN was rejected") as error:
            await asyncio.wait_for(run_telegram(service, settings_for(fake, token="999:wrong-secret")), 10)
        assert "wrong-secret" not in str(error.value)
    finally:
        await service.close(drain_timeout_s=1)


async def test_webhook_mode_receives_updates_and_checks_the_secret(fake, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hook = f"http://127.0.0.1:{port}/lorabot-hook"
    settings = {
        "webhook_url": hook,
        "webhook_listen": "127.0.0.1",
        "webhook_port": port,
        "webhook_secret": "s3cret_value",
    }
    async with running_bot(fake, tmp_path, reply="via webhook", settings=settings) as service:
        assert fake.webhook == {
            "url": hook,
            "secret_token": "s3cret_value",
            "allowed_updates": ["message", "callback_query", "message_reaction"],
        }
        fake.send_text(fake.alice, fake.private_chat(fake.alice), "hello over https")
        await fake.wait_for(reply_done(fake, ALICE, "via webhook"))
        assert not fake.calls_of("getUpdates")
        forged = {"update_id": 999, "message": {**fake.messages[(ALICE, 1)], "text": "forged"}}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                hook, json=forged, headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"}
            ) as response:
                assert response.status == 403
        fake.send_text(fake.alice, fake.private_chat(fake.alice), "and again")
        await fake.wait_for(lambda: fake.bot_texts(ALICE) == ["via webhook", "via webhook"])
        asked = [request.messages[-1]["content"] for request in engine_requests(service)]
        assert asked == ["hello over https", "and again"]  # the forged update never reached the bot


@pytest.mark.slow
async def test_real_embedded_model_answers_through_telegram(fake, tmp_path, embedded_gguf):
    """The whole stack with llama.cpp: what the user sees is what the core stored."""
    from core.service import ChatService
    from core.settings import load_core_settings

    service = ChatService(load_core_settings(data_dir=tmp_path / "data", max_new_tokens=32, temperature=0))
    await service.start()
    task = asyncio.create_task(run_telegram(service, settings_for(fake)))
    try:
        await fake.wait_for(lambda: fake.calls_of("getUpdates"))
        fake.send_text(fake.alice, fake.private_chat(fake.alice), "Say hello in one short sentence.")
        stored = await fake.wait_for(
            lambda: service.stats().replies == 1 and service.scheduler.running == 0, timeout=60
        )
        assert stored
        # delivery goes on after generation ended (the slot is already free), and the turn is
        # answered only once its final text is on screen (issue 21): wait for that
        history = await until(lambda: service.history.recent(f"telegram:{ALICE}", 10), timeout=15)
        answer = history[-1]["content"]
        assert answer.strip()
        assert fake.bot_texts(ALICE) == [answer.strip()]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await service.close(drain_timeout_s=1)


# -- shared conversations, anonymous admins, UTF-16 (issue 10) --------------------------------------
ANONYMOUS_ADMIN = 1087968824  # GroupAnonymousBot: the sender Telegram shows for every anonymous admin


def send_as_group(fake: FakeBotAPI, group: dict, text: str) -> dict:
    """An anonymous admin of `group` writes: from GroupAnonymousBot, with sender_chat = the group."""
    anonymous = fake.users.get(ANONYMOUS_ADMIN)
    if anonymous is None:
        anonymous = fake.add_user(ANONYMOUS_ADMIN, "Group", "GroupAnonymousBot")
    anonymous["is_bot"] = True
    message = fake.send_text(anonymous, group, text)
    message["sender_chat"] = group  # still in the queue: the bot polls only at our next await
    return message


def said_in(fake: FakeBotAPI, chat_id: int, count: int, predicate):
    """The bot's `count`-th message in the chat exists and its text satisfies `predicate`."""
    return lambda: len(fake.bot_texts(chat_id)) == count and predicate(fake.bot_texts(chat_id)[-1])


async def test_reset_in_a_group_needs_a_chat_admin(fake, tmp_path):
    settings = {"admin_ids": frozenset({CAROL})}
    async with running_bot(fake, tmp_path, reply="noted", settings=settings) as service:
        group = fake.group_chat(GROUP, "Club", admins={ALICE})
        turns = 0

        def resets() -> int:
            return service.engines[service.settings.default_model].forgotten.count(f"telegram:{GROUP}")

        async def ask_then_reset(sender) -> str:
            nonlocal turns
            fake.send_text(fake.bob, group, f"@{BOT_USERNAME} remember this")
            turns += 2
            await fake.wait_for(said_in(fake, GROUP, turns - 1, lambda text: text == "noted"))
            sender()
            await fake.wait_for(said_in(fake, GROUP, turns, lambda text: "conversation" in text))
            return fake.bot_texts(GROUP)[-1]

        refusal = await ask_then_reset(lambda: fake.send_text(fake.bob, group, "/reset"))  # a member
        assert refusal.startswith("Only chat admins can reset") and resets() == 0
        assert fake.calls_of("getChatMember", chat_id=GROUP, user_id=BOB)
        for admin in (
            lambda: fake.send_text(fake.alice, group, "/reset"),  # a chat administrator
            lambda: send_as_group(fake, group, "/reset"),  # an anonymous administrator
            lambda: fake.send_text(fake.carol, group, "/reset"),  # a configured admin id
        ):
            assert (await ask_then_reset(admin)).startswith("🧹 Forgot this conversation")
        assert resets() == 3
        assert not fake.calls_of("getChatMember", user_id=ANONYMOUS_ADMIN)


def test_rate_limit_key_and_anonymous_admins():
    import datetime as dtm

    from telegram import Chat, Message, User

    from bots.telegram_bot.policy import is_anonymous_admin, sender_key

    group, other = Chat(GROUP, Chat.SUPERGROUP), Chat(-100777, Chat.SUPERGROUP)
    channel = Chat(-100555, Chat.CHANNEL)
    anonymous = User(ANONYMOUS_ADMIN, "Group", is_bot=True, username="GroupAnonymousBot")

    def message(chat: Chat, user: User | None, sender_chat: Chat | None = None) -> Message:
        return Message(1, dtm.datetime.now(dtm.UTC), chat, from_user=user, sender_chat=sender_chat)

    bob = message(group, User(BOB, "Bob", is_bot=False))
    assert sender_key(bob) == f"telegram:{BOB}" and not is_anonymous_admin(bob)
    here, there = message(group, anonymous, group), message(other, anonymous, other)
    assert sender_key(here) == f"telegram:chat:{GROUP}" != sender_key(there)  # a bucket per group
    assert is_anonymous_admin(here) and is_anonymous_admin(there)
    as_channel = message(group, User(136817688, "Channel", is_bot=True), channel)  # posts as a channel
    assert sender_key(as_channel) == "telegram:chat:-100555" and not is_anonymous_admin(as_channel)


async def test_anonymous_admins_of_different_groups_have_their_own_rate_limit(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="ok", rate_limit_messages=1, rate_limit_period_s=60):
        first, second = fake.group_chat(GROUP, "One"), fake.group_chat(-100777, "Two")
        send_as_group(fake, first, f"@{BOT_USERNAME} one")
        await fake.wait_for(said_in(fake, GROUP, 1, lambda text: text == "ok"))
        send_as_group(fake, second, f"@{BOT_USERNAME} two")
        await fake.wait_for(said_in(fake, -100777, 1, lambda text: text == "ok"), timeout=5)
        send_as_group(fake, first, f"@{BOT_USERNAME} three")  # the admins of one group share a bucket
        await fake.wait_for(said_in(fake, GROUP, 2, lambda text: "too fast" in text))


async def test_a_reply_of_emoji_is_split_by_telegrams_utf16_count(fake, tmp_path):
    output = "😀" * 2100  # 2100 characters, 4200 UTF-16 code units: over Telegram's 4096
    async with running_bot(fake, tmp_path, reply=output):
        fake.send_text(fake.alice, fake.private_chat(fake.alice), "emoji please")
        await fake.wait_for(lambda: "".join(fake.bot_texts(ALICE)) == output, timeout=5)
    assert len(fake.bot_texts(ALICE)) == 2
    assert all(len(text.encode("utf-16-le")) // 2 <= 4096 for text in fake.bot_texts(ALICE))
    assert all(call.status == 200 for call in fake.calls if call.method in ("sendMessage", "editMessageText"))


# -- drafts: private replies stream through sendMessageDraft (issue 28) -------------------------------
def drafts_in(fake: FakeBotAPI, chat_id: int) -> list[str]:
    """The texts of the drafts the bot sent to a chat, oldest first ("" is the placeholder)."""
    return [draft["text"] for draft in fake.draft_log if draft["chat_id"] == chat_id]


async def test_a_private_reply_streams_as_a_draft_then_arrives_as_one_message(fake, tmp_path):
    output = " ".join(f"word{i}" for i in range(80))  # 4 s: the chat's budget allows a few drafts
    async with running_bot(fake, tmp_path, reply=output, token_delay_s=0.05):
        chat = fake.private_chat(fake.alice)
        question = fake.send_text(fake.alice, chat, "stream it")
        # the user sees the growing text as a draft while no message exists yet
        seen = await fake.wait_for(
            lambda: (draft := fake.draft_in(ALICE)) and draft.startswith("word0") and fake.seen_by_user(ALICE)
        )
        assert seen[0][0] == "draft" and not fake.bot_messages(ALICE)
        await fake.wait_for(reply_done(fake, ALICE, output))
    assert fake.seen_by_user(ALICE) == [("message", output)]  # the draft gave way to the message
    drafts = drafts_in(fake, ALICE)
    assert drafts[0] == "", "a placeholder ('Thinking…') comes first"
    texts = [text for text in drafts if text]
    assert len(texts) >= 2 and all(output.startswith(text) for text in texts)
    assert [len(text) for text in texts] == sorted(len(text) for text in texts), "the draft only grows"
    assert len({d["draft_id"] for d in fake.draft_log}) == 1 and fake.draft_log[0]["draft_id"] != 0
    (sent,) = fake.calls_of("sendMessage", chat_id=ALICE)  # one message: the final text
    assert sent.params["text"] == output and sent.at > fake.calls_of("sendMessageDraft")[-1].at
    message = fake.bot_messages(ALICE)[0]
    assert message["reply_to_message"]["message_id"] == question["message_id"]
    assert any(data.startswith("fb:up:") for data in fake.button_data(message)), "the final text has 👍 👎 🔁"
    assert not fake.calls_of("editMessageText", ok_only=False), "no message changes under the user"
    assert not fake.calls_of("sendChatAction"), "the placeholder says it; no typing indicator"
    assert all(call.status == 200 for call in fake.calls)


async def test_drafts_off_streams_by_edits_as_before(fake, tmp_path):
    output = " ".join(f"word{i}" for i in range(80))
    async with running_bot(fake, tmp_path, reply=output, token_delay_s=0.02, settings={"drafts": False}):
        fake.send_text(fake.alice, fake.private_chat(fake.alice), "stream it")
        await fake.wait_for(reply_done(fake, ALICE, output))
    assert not fake.calls_of("sendMessageDraft", ok_only=False)
    assert fake.calls_of("editMessageText", chat_id=ALICE)
    assert load_telegram_settings(_env_file=None).drafts is True  # on by default


async def test_groups_get_edits_without_trying_a_draft(fake, tmp_path):
    output = " ".join(f"word{i}" for i in range(60))
    async with running_bot(fake, tmp_path, reply=output, token_delay_s=0.02):
        group = fake.group_chat(GROUP, "Study group")
        fake.send_text(fake.alice, group, f"@{BOT_USERNAME} stream it")
        await fake.wait_for(reply_done(fake, GROUP, output))
        fake.send_text(fake.bob, fake.private_chat(fake.bob), "and here?")
        await fake.wait_for(reply_done(fake, BOB, output))
    drafted = {call.params["chat_id"] for call in fake.calls_of("sendMessageDraft", ok_only=False)}
    assert drafted == {BOB}, "drafts in the private chat only; the group is never sent one"
    assert fake.calls_of("editMessageText", chat_id=GROUP), "the group's reply grows by edits"
    assert not fake.calls_of("editMessageText", chat_id=BOB)


@pytest.mark.parametrize("refusal", ["chat", "server"])
async def test_a_refused_draft_falls_back_to_edits_without_losing_text(fake, tmp_path, refusal):
    """A 400 for one chat (a topic without drafts, Telegram's rules changing) falls back in that
    chat only; a 404 (an API server without the method) everywhere. The reply is whole either way."""
    output = " ".join(f"word{i}" for i in range(60))
    if refusal == "chat":
        fake.refuse_drafts.add(ALICE)
    else:
        fake.drafts_supported = False
    async with running_bot(fake, tmp_path, reply=output, token_delay_s=0.02):
        alice = fake.private_chat(fake.alice)
        fake.send_text(fake.alice, alice, "first")
        await fake.wait_for(reply_done(fake, ALICE, output))
        fake.send_text(fake.alice, alice, "second")
        await fake.wait_for(lambda: fake.bot_texts(ALICE) == [output, output])
        fake.send_text(fake.bob, fake.private_chat(fake.bob), "and Bob?")
        await fake.wait_for(reply_done(fake, BOB, output))
    refused = [call for call in fake.calls_of("sendMessageDraft", ok_only=False) if call.status != 200]
    assert [call.status for call in refused] == [400 if refusal == "chat" else 404], "once: remembered"
    assert refused[0].params["chat_id"] == ALICE
    assert fake.calls_of("editMessageText", chat_id=ALICE), "Alice's replies grow by edits"
    assert [m["text"] for m in fake.bot_messages(ALICE)] == [output, output]
    if refusal == "chat":  # Bob's chat still streams drafts
        assert drafts_in(fake, BOB) and not fake.calls_of("editMessageText", chat_id=BOB)
    else:
        assert not drafts_in(fake, BOB) and fake.calls_of("editMessageText", chat_id=BOB)


async def test_a_reply_longer_than_one_message_drafts_its_tail_and_sends_every_part(fake, tmp_path):
    paragraph = ("word " * 99 + "end.").strip()  # 499 characters
    output = "\n\n".join([paragraph] * 18)  # 9016 characters: three messages
    async with running_bot(fake, tmp_path, reply=output, token_delay_s=0.001):
        fake.send_text(fake.alice, fake.private_chat(fake.alice), "write a lot")
        await fake.wait_for(lambda: "\n\n".join(fake.bot_texts(ALICE)) == output, timeout=30)
    texts = fake.bot_texts(ALICE)
    assert len(texts) == 3 and all(len(text) <= 4096 for text in texts)
    assert all(call.status == 200 for call in fake.calls), "no draft over Telegram's limit"
    assert max(len(text) for text in drafts_in(fake, ALICE)) <= 4096
    messages = fake.bot_messages(ALICE)
    assert [bool(fake.button_data(m)) for m in messages] == [False, False, True], "buttons under the last"
    assert not fake.calls_of("editMessageText") and fake.draft_in(ALICE) is None


async def test_a_draft_is_renewed_before_it_lapses(fake, tmp_path, monkeypatch):
    """Telegram's draft lives ~30 s (renewed after 20 s unchanged); here 5 s, renewed after 1.5 s
    (the chat's budget may hold a draft back up to 4 s). The reply waits in line behind another
    (one slot), so its queue position stays unchanged for ~10 s."""
    from bots.telegram_bot.sink import TelegramSink

    fake.draft_ttl_s = 5.0
    monkeypatch.setattr(TelegramSink, "draft_refresh_s", 1.5)
    output = " ".join(f"w{i}" for i in range(100))
    async with running_bot(fake, tmp_path, reply=output, token_delay_s=0.1, parallel=1):
        fake.send_text(fake.bob, fake.private_chat(fake.bob), "first in line")
        await fake.wait_for(lambda: (fake.draft_in(BOB) or "").startswith("w0"))
        fake.send_text(fake.alice, fake.private_chat(fake.alice), "second in line")
        await fake.wait_for(lambda: (fake.draft_in(ALICE) or "").startswith("⏳"))
        await fake.wait_for(reply_done(fake, ALICE, output), timeout=30)
    renewed = [text for text in drafts_in(fake, ALICE) if text.startswith("⏳")]
    assert len(renewed) >= 3, "the unchanged queue position was sent again"
    assert fake.lapsed_drafts == [], "no draft vanished before the reply was there"
    assert fake.bot_texts(BOB) == [output] and fake.bot_texts(ALICE) == [output]


async def test_shutdown_mid_draft_sends_the_partial_reply_with_the_note(fake, tmp_path):
    service = make_service(tmp_path, reply="tok " * 400, token_delay_s=0.02)
    await service.start()
    task = asyncio.create_task(run_telegram(service, settings_for(fake, shutdown_grace_s=0)))
    await fake.wait_for(lambda: fake.calls_of("getUpdates"))
    fake.send_text(fake.alice, fake.private_chat(fake.alice), "long please")
    await fake.wait_for(lambda: (fake.draft_in(ALICE) or "").startswith("tok"))
    assert not fake.bot_messages(ALICE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    await service.close(drain_timeout_s=1)
    (note,) = fake.bot_texts(ALICE)  # a message of its own: the draft it replaces vanishes
    assert note.startswith("tok") and note.endswith(INTERRUPTED)
    assert fake.draft_in(ALICE) is None


async def test_a_queue_place_is_drafted_as_seldom_as_a_status_edit(fake, tmp_path):
    """The place in line changes with every reply ahead; while drafting it is shown at once, then
    again only after the status interval or before the draft lapses (not at each change)."""
    users = [fake.add_user(900 + i, f"User{i}") for i in range(4)]
    output = " ".join(f"w{i}" for i in range(20))
    async with running_bot(fake, tmp_path, reply=output, token_delay_s=0.1, parallel=1):
        for user in users:
            fake.send_text(user, fake.private_chat(user), "in line")
        await fake.wait_for(lambda: all(fake.bot_texts(u["id"]) == [output] for u in users), timeout=40)
    last = users[-1]["id"]
    places = [text for text in drafts_in(fake, last) if text.startswith("⏳")]
    assert len(set(places)) == 1 and len(places) == 1, places  # the place changed 2-3 times meanwhile
    assert fake.lapsed_drafts == []


async def test_a_topic_without_drafts_falls_back_on_its_own(fake, tmp_path):
    """A private chat's topic where Telegram refuses drafts (the fake: a chat without topics
    enabled) gets edits; the same chat outside the topic, and a chat with topics, keep drafts."""
    output = " ".join(f"word{i}" for i in range(40))
    async with running_bot(fake, tmp_path, reply=output, token_delay_s=0.05):
        alice = fake.private_chat(fake.alice)
        fake.send_text(fake.alice, alice, "in topic 7", thread_id=7)
        await fake.wait_for(reply_done(fake, ALICE, output))
        fake.send_text(fake.alice, alice, "outside topics")
        await fake.wait_for(lambda: fake.bot_texts(ALICE) == [output, output])
        fake.send_text(fake.alice, alice, "in topic 7 again", thread_id=7)
        await fake.wait_for(lambda: fake.bot_texts(ALICE) == [output] * 3)
        bob = fake.private_chat(fake.bob, topics=True)
        fake.send_text(fake.bob, bob, "in Bob's topic 3", thread_id=3)
        await fake.wait_for(reply_done(fake, BOB, output))
    drafts = fake.calls_of("sendMessageDraft", ok_only=False)
    refused = [call for call in drafts if call.status != 200]
    assert [(c.params["chat_id"], c.params.get("message_thread_id")) for c in refused] == [(ALICE, 7)]
    assert any(
        c.status == 200 and c.params["chat_id"] == ALICE and "message_thread_id" not in c.params
        for c in drafts
    )
    assert any(c.status == 200 and c.params.get("message_thread_id") == 3 for c in drafts)
    topic_sends = [
        c for c in fake.calls_of("sendMessage", chat_id=ALICE) if c.params.get("message_thread_id") == 7
    ]
    assert len(topic_sends) == 2 and len(fake.calls_of("editMessageText", chat_id=ALICE)) >= 2
    assert [m.get("message_thread_id") for m in fake.bot_messages(BOB)] == [3]
