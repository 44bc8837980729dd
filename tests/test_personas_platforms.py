"""`/persona` on the platforms (docs/personas.md): the real discord.py and python-telegram-bot
against the fake servers of bench/fakes/, with the fixtures of tests/test_discord.py and
tests/test_telegram.py. The scripted engines answer with a tag of the system prompt they got, so
each answer says which persona's prompt the model saw."""

from __future__ import annotations

import pytest
from test_discord import MANAGE_CHANNELS, answer, answer_text, said
from test_discord import fake as fake  # noqa: F401  the fixtures, under their own names
from test_discord import start_bot as start_bot  # noqa: F401
from test_telegram import ALICE, BOT_USERNAME, CAROL, GROUP, keyboard_of, reply_done, running_bot

from bench.fakes.discord import EVERYDAY_PERMISSIONS, FakeDiscord

PIRATE = "You are a pirate. Answer like one."
ROBOT = "You are a robot. Answer in short beeps."
TAGS = {PIRATE: "Arr", ROBOT: "Beep"}
EPHEMERAL = 64


def tag(request) -> str:
    """What the default model answers: which system prompt it read."""
    return TAGS.get(request.messages[0]["content"], "plain")


def other_tag(request) -> str:
    return "other " + tag(request)


def last_text(fake, chat_id: int) -> str:
    texts = fake.bot_texts(chat_id)
    return texts[-1] if texts else ""


def add_personas(service) -> None:
    service.registry.add_persona("pirate", PIRATE, description="talks like a pirate")
    service.registry.add_persona("robot", ROBOT, model="other")


# -- Discord ---------------------------------------------------------------------------------------
async def test_discord_persona_needs_manage_channels_in_a_server_and_not_in_a_dm(fake, start_bot):  # noqa: F811
    client = await start_bot(tag, models={"other": other_tag}, admin_ids="77")
    add_personas(client.service)
    manager = EVERYDAY_PERMISSIONS | MANAGE_CHANNELS

    # the list, with the autocomplete of names
    await fake.slash("persona", {"name": "pir"}, autocomplete="name")
    choices = (await fake.wait_until(lambda: [c for c in fake.callbacks if c["type"] == 8]))[0]["data"]
    assert [c["value"] for c in choices["choices"]] == ["pirate"]
    listing = await said(fake, await fake.slash("persona", {}, user_id=5))
    assert listing["content"].startswith("Persona here: default") and listing["flags"] & EPHEMERAL
    assert "pirate – talks like a pirate" in listing["content"]
    assert "Only members with Manage Channels (or lorabot admins) can change it." in listing["content"]

    # a member without Manage Channels may not choose one, not even for their own conversation
    refused = await said(fake, await fake.slash("persona", {"name": "pirate"}, user_id=5))
    assert (
        refused["content"]
        == "Only members with Manage Channels (or lorabot admins) can choose the persona here."
    )
    assert refused["flags"] & EPHEMERAL
    assert await answer_text(fake, client, user_id=5) == "plain"

    # with Manage Channels: their conversation here, no one else's
    mine = await said(fake, await fake.slash("persona", {"name": "pirate"}, user_id=5, permissions=manager))
    assert mine["content"] == "Persona here is now pirate (model smollm2-135m)."
    assert await answer_text(fake, client, user_id=5) == "Arr"
    assert await answer_text(fake, client, user_id=6) == "plain"

    # the channel's default: Manage Channels or a lorabot admin; a conversation's own persona wins
    refused = await said(fake, await fake.slash("persona", {"name": "robot", "scope": "channel"}, user_id=6))
    assert "Only members with Manage Channels" in refused["content"] and refused["flags"] & EPHEMERAL
    assert await answer_text(fake, client, user_id=6) == "plain"
    channel = await said(fake, await fake.slash("persona", {"name": "robot", "scope": "channel"}, user_id=77))
    assert channel["content"].startswith("The default here is now persona robot")
    assert not channel["flags"] & EPHEMERAL  # said to the channel
    assert await answer_text(fake, client, user_id=6) == "other Beep"  # the persona's model and prompt
    assert await answer_text(fake, client, user_id=5) == "Arr"
    assert await answer_text(fake, client, user_id=6, channel_id=FakeDiscord.OTHER_CHANNEL_ID) == "plain"

    # bad input: an unknown persona, then one whose model was removed; nothing changes
    unknown = await said(fake, await fake.slash("persona", {"name": "ninja"}, user_id=5, permissions=manager))
    assert "Unknown persona 'ninja'" in unknown["content"] and "pirate, robot" in unknown["content"]
    client.service.registry.remove("other")
    gone = await said(fake, await fake.slash("persona", {"name": "robot"}, user_id=5, permissions=manager))
    assert (
        "'other', which is no longer registered" in gone["content"]
        and "Nothing was changed" in gone["content"]
    )
    assert await answer_text(fake, client, user_id=5) == "Arr"
    sent = await fake.user_message("hi", mention_bot=True, user_id=6)
    texts = [m["content"] for m in await answer(fake, client, sent)]
    assert texts[-1].startswith("ℹ️ Note: persona robot's model other is no longer registered")
    assert texts[-1].endswith("\n\nBeep")  # its prompt, from the default model

    # in a DM anyone chooses their own
    dm = await said(fake, await fake.slash("persona", {"name": "pirate"}, user_id=42, guild=False))
    assert dm["content"].startswith("Persona here is now pirate")
    message = await fake.user_message("hello", guild=False, user_id=42)
    assert (await answer(fake, client, message))[-1]["content"] == "Arr"


# -- Telegram --------------------------------------------------------------------------------------
@pytest.fixture
async def telegram():
    from test_telegram import BOB

    from bench.fakes.telegram import FakeBotAPI

    server = FakeBotAPI()
    await server.start()
    server.alice = server.add_user(ALICE, "Alice", "alice_w")
    server.bob = server.add_user(BOB, "Bob", "bob_b")
    server.carol = server.add_user(CAROL, "Carol")
    yield server
    await server.stop()


async def test_telegram_persona_in_a_group_only_for_its_admins(telegram, tmp_path):
    fake = telegram
    settings = {"admin_ids": frozenset({CAROL}), "drafts": False}
    async with running_bot(
        fake, tmp_path, reply=tag, models={"other": other_tag}, settings=settings
    ) as service:
        add_personas(service)
        group = fake.group_chat(GROUP, "Club", admins={ALICE})

        # a member sees the list as a keyboard but may not choose
        fake.send_text(fake.bob, group, "/persona")
        keyboard = await fake.wait_for(
            lambda: next((m for m in fake.bot_messages(GROUP) if keyboard_of(fake, m, "persona:")), None)
        )
        assert fake.button_data(keyboard) == ["persona:default", "persona:pirate", "persona:robot"]
        assert keyboard["text"].startswith("Persona here: default")
        fake.send_text(fake.bob, group, "/persona pirate")
        await fake.wait_for(lambda: last_text(fake, GROUP).startswith("Only chat admins can choose"))
        denied = fake.press_button(fake.bob, keyboard, "persona:pirate")
        await fake.wait_for(lambda: fake.calls_of("answerCallbackQuery", callback_query_id=denied))
        answer = fake.calls_of("answerCallbackQuery", callback_query_id=denied)[0].params
        assert "Only chat admins" in answer["text"] and answer["show_alert"] is True
        fake.send_text(fake.bob, group, f"@{BOT_USERNAME} hello")
        await fake.wait_for(reply_done(fake, GROUP, "plain"))

        # a chat administrator may (for the whole chat), and so may a configured admin id
        allowed = fake.press_button(fake.alice, keyboard, "persona:pirate")
        await fake.wait_for(lambda: fake.calls_of("answerCallbackQuery", callback_query_id=allowed))
        fake.send_text(fake.bob, group, f"@{BOT_USERNAME} hello")
        await fake.wait_for(reply_done(fake, GROUP, "Arr"))
        fake.send_text(fake.carol, group, "/persona robot")
        await fake.wait_for(lambda: last_text(fake, GROUP) == "Persona here is now robot (model other).")
        fake.send_text(fake.bob, group, f"@{BOT_USERNAME} hello")
        await fake.wait_for(reply_done(fake, GROUP, "other Beep"))

        # bad input from an admin: an unknown persona; nothing changes
        fake.send_text(fake.alice, group, "/persona ninja")
        await fake.wait_for(lambda: "Unknown persona 'ninja'" in last_text(fake, GROUP))
        assert (await service.current_persona(f"telegram:{GROUP}", f"telegram:{GROUP}")).name == "robot"

        # in a private chat the user chooses
        chat = fake.private_chat(fake.bob)
        fake.send_text(fake.bob, chat, "/persona pirate")
        await fake.wait_for(lambda: last_text(fake, chat["id"]).startswith("Persona here is now pirate"))
        fake.send_text(fake.bob, chat, "hi")
        await fake.wait_for(reply_done(fake, chat["id"], "Arr"))
