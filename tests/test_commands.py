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
    assert [choice.value for choice in (await run_command(service, alice, "model")).choices if choice.selected] == [
        "other"
    ]


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
    assert (await run_command(service, Where("c9", "u", scopes=("channel", "server")), "model")).text.startswith(
        "Model here: other"
    )


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
