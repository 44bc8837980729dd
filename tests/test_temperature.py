"""/temperature: per conversation, within bounds, used for sampling, shown in /stats."""

from __future__ import annotations

import pytest
from test_under_load import discord_bot, telegram_bot

from bench.fakes.discord import FakeDiscord
from core.errors import BadTemperature
from support.engines import make_service


async def test_service_keeps_a_temperature_per_conversation(tmp_path):
    service = make_service(tmp_path, "ok", temperature=0.7)
    await service.start()
    try:
        await service.set_temperature("a", 0.2)
        with pytest.raises(BadTemperature):
            await service.set_temperature("a", 2.5)
        with pytest.raises(BadTemperature):
            await service.set_temperature("a", float("nan"))
        with pytest.raises(BadTemperature):
            await service.set_temperature("a", "warm")
        await service.set_temperature("b", "0,9")  # as typed, with a decimal comma
        assert await service.current_temperature("b") == 0.9
        await service.set_temperature("b", "default")
        assert await service.current_temperature("a") == 0.2 and await service.current_temperature("b") == 0.7
        async for _ in service.reply("a", "u1", "hi"):
            pass
        engine = service.engines[service.settings.default_model]
        assert engine.requests[-1].temperature == 0.2
        await service.set_temperature("a", None)  # "default"
        assert await service.current_temperature("a") == 0.7
    finally:
        await service.close()


async def test_temperature_survives_a_restart(tmp_path):
    first = make_service(tmp_path, "ok")
    await first.start()
    await first.set_temperature("a", 1.3)
    await first.close()
    second = make_service(tmp_path, "ok")
    await second.start()
    try:
        assert await second.current_temperature("a") == 1.3
    finally:
        await second.close()


async def test_telegram_temperature_command_and_stats(tmp_path):
    async with telegram_bot(tmp_path, "ok") as (fake, service):
        alice, bob = fake.add_user(81, "Alice"), fake.add_user(82, "Bob")
        chat = fake.private_chat(alice)
        fake.send_text(alice, chat, "/temperature 0.3")
        await fake.wait_for(lambda: fake.bot_texts(81) == ["Temperature here is now 0.3."])
        fake.send_text(alice, chat, "/temperature 9")
        await fake.wait_for(lambda: len(fake.bot_texts(81)) == 2)
        assert fake.bot_texts(81)[1].startswith("⚠️ The temperature must be a number from 0 to 2")
        fake.send_text(alice, chat, "hello")
        await fake.wait_for(lambda: fake.bot_texts(81)[-1] == "ok")
        assert service.engines[service.settings.default_model].requests[-1].temperature == 0.3
        fake.send_text(alice, chat, "/stats")
        await fake.wait_for(lambda: len(fake.bot_texts(81)) == 4)
        assert "temperature 0.3" in fake.bot_texts(81)[3]
        group = fake.group_chat(-100777, "Club")  # Bob is no admin: the group shares its conversation
        fake.send_text(bob, group, "/temperature 1.5")
        await fake.wait_for(lambda: fake.bot_texts(-100777))
        assert fake.bot_texts(-100777)[0].startswith("Only chat admins can change the temperature")
        assert await service.current_temperature("telegram:-100777") == service.settings.temperature


async def test_discord_temperature_is_per_user_conversation(tmp_path):
    async with discord_bot(tmp_path, "ok") as (fake, client, _):
        token = await fake.slash("temperature", {"value": "0.4"})
        reply = (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]["content"]
        assert reply == "Temperature here is now 0.4."
        message = await fake.user_message("hi", mention_bot=True)
        await fake.wait_until(lambda: fake.replies_to(message["id"]))
        await client.wait_idle()
        engine = client.service.engines[client.service.settings.default_model]
        assert engine.requests[-1].temperature == 0.4
        other = await fake.user_message("hi", mention_bot=True, user_id=FakeDiscord.OWNER_ID + 5)
        await fake.wait_until(lambda: fake.replies_to(other["id"]))
        await client.wait_idle()
        assert engine.requests[-1].temperature == client.service.settings.temperature  # not theirs
        token = await fake.slash("stats", {})
        stats = (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]["content"]
        assert "temperature 0.4" in stats
