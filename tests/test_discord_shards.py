"""Discord shards split over two bot processes on one PostgreSQL database.

Two real `python -m lorabot discord` processes (shard 0 and shard 1 of 2, the embedded model)
connect to the fake Discord, which routes each server's events by `(guild_id >> 22) % 2` as
Discord does. Each process answers only the server on its shard, and both store their turns in
the shared database. Also: the shard settings' start-up errors.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from bench.fakes.discord import FakeDiscord
from bots.discord_bot.client import LorabotClient, ShardedLorabotClient, make_client
from bots.discord_bot.settings import load_discord_settings
from core.history import ConversationStore
from core.schema import turns
from core.settings import SettingsError
from support.waiting import until

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_shard_settings(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    settings = load_discord_settings(token="t", shard_count="4", shard_ids="1, 3")
    assert settings.shard_count == 4 and settings.shard_ids == {1, 3}
    client = make_client(None, settings)  # type: ignore[arg-type]  # the service is not used here
    assert isinstance(client, ShardedLorabotClient) and client.shard_ids == [1, 3] and client.shard_count == 4
    assert type(make_client(None, load_discord_settings(token="t"))) is LorabotClient  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT"):
        load_discord_settings(token="t", shard_ids="0")
    with pytest.raises(
        SettingsError, match=r"DISCORD_SHARD_IDS \[2\] must be below DISCORD_SHARD_COUNT \(2\)"
    ):
        load_discord_settings(token="t", shard_count="2", shard_ids="0 2")


def bot_env(fake: FakeDiscord, data_dir: Path, database_url: str, shard: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORABOT_", "TELEGRAM_", "DISCORD_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        DISCORD_TOKEN=fake.token,
        DISCORD_API_BASE_URL=fake.api_base_url,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        DISCORD_SHARD_COUNT="2",
        DISCORD_SHARD_IDS=str(shard),
        DISCORD_EDIT_INTERVAL_S="0.2",
        DISCORD_SHUTDOWN_GRACE_S="2",
        LORABOT_DATA_DIR=str(data_dir),
        LORABOT_DATABASE_URL=database_url,
        LORABOT_MAX_NEW_TOKENS="6",
        LORABOT_TEMPERATURE="0",
        LORABOT_THREADS="1",
    )
    return env


async def test_two_processes_run_one_shard_each_on_one_database(tmp_path, postgres_url):
    fake = FakeDiscord(limits=None)
    fake.add_guild()  # SECOND_GUILD_ID is on shard 0; GUILD_ID on shard 1
    await fake.start()
    bots: list[asyncio.subprocess.Process] = []
    try:
        for shard in (0, 1):
            data_dir = tmp_path / f"shard{shard}"
            data_dir.mkdir()
            log = (tmp_path / f"shard{shard}.log").open("wb")  # the child owns it
            bots.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "lorabot",
                    "discord",
                    cwd=tmp_path,
                    env=bot_env(fake, data_dir, postgres_url, shard),
                    stdout=log,
                    stderr=log,
                )  # fmt: skip
            )
            log.close()
        await fake.wait_until(lambda: fake.ready_shards == {(0, 2), (1, 2)}, timeout=90)
        assert sorted(identify["shard"] for identify in fake.identifies) == [[0, 2], [1, 2]]
        # each process is ready once its shard's servers are in (on_ready logs which shards it runs)
        await fake.wait_until(
            lambda: all(f"(shards [{n}] of 2)" in log_of(tmp_path, n) for n in (0, 1)), timeout=60
        )

        first = await fake.user_message("Say hi.", mention_bot=True)  # GUILD_ID: shard 1
        second = await fake.user_message("Say hello.", mention_bot=True, channel_id=fake.SECOND_CHANNEL_ID)
        store = ConversationStore(postgres_url)
        try:

            async def answered() -> list[tuple[str, str]]:
                async with store.engine.connect() as db:
                    query = sa.select(turns.c.conversation_id, turns.c.owner).where(
                        turns.c.state == "answered"
                    )
                    return [tuple(row) for row in (await db.execute(query)).all()]

            async def both_answered() -> list[tuple]:
                rows = await answered()
                return rows if len(rows) >= 2 else []

            rows = await until(both_answered, timeout=120, every=0.1)
            owners = {conversation: owner.split(":")[1] for conversation, owner in rows}
        finally:
            await store.close()
        user = FakeDiscord.OWNER_ID
        assert owners == {  # each server answered once, by the process running its shard
            f"discord:channel:{fake.CHANNEL_ID}:user:{user}": str(bots[1].pid),
            f"discord:channel:{fake.SECOND_CHANNEL_ID}:user:{user}": str(bots[0].pid),
        }
        assert fake.replies_to(first["id"]) and fake.replies_to(second["id"])
    finally:
        for bot in bots:
            if bot.returncode is None:
                bot.send_signal(signal.SIGTERM)
        for bot in bots:
            try:
                async with asyncio.timeout(30):
                    await bot.wait()
            except TimeoutError:
                bot.kill()
                await bot.wait()
        await fake.close()
    logs = "\n".join(log_of(tmp_path, n) for n in (0, 1))
    assert all(bot.returncode == 0 for bot in bots), logs


def log_of(tmp_path: Path, shard: int) -> str:
    return (tmp_path / f"shard{shard}.log").read_text(errors="replace")
