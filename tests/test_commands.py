"""The platform-neutral chat commands (core/commands.py) on the real service and store."""

from __future__ import annotations

import io

import pytest

from bots.console import ConsoleChat
from core.commands import COMMANDS, Where, run_command
from support.engines import make_service


@pytest.fixture
async def service(tmp_path):
    service = make_service(tmp_path, "ok", models={"other": "other"}, temperature=0.7)
    await service.start()
    yield service
    await service.close()


async def test_model_lists_choices_with_the_current_one_selected_then_sets_it(service):
    alice = Where("c1", "alice")
    shown = await run_command(service, alice, "model")
    assert shown.choose == "model" and not shown.refused
    assert [(choice.value, choice.selected) for choice in shown.choices] == [
        ("smollm2-135m", True),
        ("other", False),
    ]
    assert shown.text.startswith("Model here: smollm2-135m")
    shown = await run_command(service, alice, "model", " other ")
    assert shown.text == "Model here is now other." and not shown.public
    assert await service.current_model("c1") == "other"
    assert [
        choice.value for choice in (await run_command(service, alice, "model")).choices if choice.selected
    ] == ["other"]


async def test_an_unknown_model_is_refused_with_the_valid_names(service):
    shown = await run_command(service, Where("c1", "alice"), "model", "nope")
    assert shown.refused and "Unknown model 'nope'" in shown.text and "other" in shown.text
    assert await service.current_model("c1") == "smollm2-135m"


async def test_a_shared_conversation_changes_only_for_those_who_may_and_says_so_publicly(service):
    member = Where("group", "bob", shared=True, may_change=False, who_may_change="chat admins")
    admin = Where("group", "ann", shared=True, may_change=True)
    await service.set_temperature("group", 0.5)
    for name, argument in (("model", "other"), ("temperature", "1.5"), ("reset", "")):
        shown = await run_command(service, member, name, argument)
        assert shown.refused and shown.text.startswith("Only chat admins can"), name
    assert await service.current_model("group") == "smollm2-135m"
    assert await service.current_temperature("group") == 0.5
    assert (await run_command(service, member, "temperature")).text.startswith("Temperature here: 0.5")

    shown = await run_command(service, admin, "temperature", "1.5")
    assert shown.public and shown.text == "Temperature here is now 1.5."
    shown = await run_command(service, admin, "reset")
    assert shown.public and shown.text.startswith("🧹 Forgot this conversation")


async def test_a_bad_temperature_is_refused_and_nothing_changes(service):
    shown = await run_command(service, Where("c1", "alice"), "temperature", "warm")
    assert shown.refused and "0 to 2" in shown.text
    assert await service.current_temperature("c1") == 0.7


async def test_stats_names_the_model_and_temperature_here(service):
    await service.set_model("c1", "other")
    shown = await run_command(service, Where("c1", "alice"), "stats")
    assert shown.text.splitlines()[0] == "Model here: other, temperature 0.7"
    assert "Queue: 0 running, 0 waiting" in shown.text


async def test_the_scope_chain_decides_the_model_shown(service):
    await service.set_scope_default("server", "other")
    assert (
        await run_command(service, Where("c9", "u", scopes=("channel", "server")), "model")
    ).text.startswith("Model here: other")


async def test_an_unknown_command_says_so(service):
    shown = await run_command(service, Where("c1", "alice"), "nope")
    assert shown.refused and shown.text.startswith("Unknown command /nope")


async def test_every_command_is_offered_in_the_terminal_help(service):
    out = io.StringIO()
    chat = ConsoleChat(service, out=out, user="alice")
    await chat.command("/help")
    for name in COMMANDS:
        assert f"/{name}" in out.getvalue()
    await chat.command("/models")
    assert " * smollm2-135m" in out.getvalue() and "   other – scripted other" in out.getvalue()


# -- a new command reaches every platform with no adapter code ----------------------------------
@pytest.fixture
def pick_command():
    """A command registered the way a new setting would be: one function in COMMANDS."""
    from core.commands import Choice, Shown, command

    async def pick(service, where: Where, value: str) -> Shown:
        if value:
            return Shown(f"picked {value} in {where.conversation_id}", public=where.shared)
        return Shown("pick one", choices=(Choice("red", "red"), Choice("blue", "blue")), choose="pick")

    command("pick", "pick a colour", argument="colour", argument_help="red or blue")(pick)
    yield
    COMMANDS.pop("pick")


async def test_a_new_command_works_on_telegram_with_its_keyboard(tmp_path, pick_command):
    from test_under_load import telegram_bot

    async with telegram_bot(tmp_path, "ok") as (fake, _service):
        alice = fake.add_user(91, "Alice")
        chat = fake.private_chat(alice)
        await fake.wait_for(lambda: "pick" in [c["command"] for c in fake.commands])
        fake.send_text(alice, chat, "/pick blue")
        await fake.wait_for(lambda: fake.bot_texts(91) == ["picked blue in telegram:91"])
        fake.send_text(alice, chat, "/pick")
        keyboard = await fake.wait_for(
            lambda: next((m for m in fake.bot_messages(91) if "reply_markup" in m), None)
        )
        data = [row[0]["callback_data"] for row in keyboard["reply_markup"]["inline_keyboard"]]
        assert data == ["pick:red", "pick:blue"]
        query = fake.press_button(alice, keyboard, "pick:red")
        await fake.wait_for(lambda: fake.calls_of("answerCallbackQuery", callback_query_id=query))
        assert fake.calls_of("answerCallbackQuery", callback_query_id=query)[0].params["text"] == (
            "picked red in telegram:91"
        )


async def test_a_new_command_works_on_discord_as_an_app_command(tmp_path, pick_command):
    from test_under_load import discord_bot

    async with discord_bot(tmp_path, "ok") as (fake, _client, _):
        commands = {c["name"]: c for c in fake.commands}
        assert commands["pick"]["description"] == "pick a colour"
        assert [option["name"] for option in commands["pick"]["options"]] == ["colour"]
        token = await fake.slash("pick", {"colour": "red"})
        reply = (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]["content"]
        assert reply.startswith("picked red in discord:channel:")


async def test_a_new_command_works_in_the_terminal(service, pick_command):
    out = io.StringIO()
    chat = ConsoleChat(service, out=out, user="alice")
    await chat.command("/pick blue")
    assert "picked blue in console:alice" in out.getvalue()
    await chat.command("/help")
    assert "/pick [colour] – pick a colour" in out.getvalue()
