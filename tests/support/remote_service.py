"""A `ChatService` whose default model "remote" is served by endpoints a test names, built by the
production engine factory (tests/test_remote_engine.py, tests/faults/test_remote_faults.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from core.engines.remote import OpenAIEngine
from core.pool import default_engine_factory
from core.registry import ModelEntry, ModelRegistry
from core.service import ChatService
from core.settings import CoreSettings, load_core_settings


class Engines:
    """The production factory; remembers each remote engine it built (health checks every
    `health_interval_s`)."""

    def __init__(self, health_interval_s: float = 3600.0) -> None:
        self.health_interval_s = health_interval_s
        self.built: dict[str, OpenAIEngine] = {}

    def __call__(self, entry: ModelEntry, settings: CoreSettings):
        if not entry.is_remote:
            return default_engine_factory(entry, settings)
        engine = OpenAIEngine.from_entry(entry, settings, health_interval_s=self.health_interval_s)
        self.built[entry.name] = engine
        return engine


@contextlib.asynccontextmanager
async def remote_service(
    tmp_path: Path, urls: list[str], engines: Engines | None = None, *, entry: dict | None = None, **overrides
) -> AsyncIterator[ChatService]:
    settings = load_core_settings(
        **{
            "data_dir": tmp_path / "data", "default_model": "remote",
            "temperature": 0.0, "max_new_tokens": 24,
            "rate_limit_messages": 1000, "threads": 1, "kv_slots": 2, "parallel": 2, "context_length": 512,
            **overrides,
        }
    )  # fmt: skip
    registry = ModelRegistry(settings.resolved_models_file)
    registry.add("remote", urls=urls, **(entry or {}))
    service = ChatService(settings, engine_factory=engines or Engines(), registry=registry)
    await service.start()
    try:
        yield service
    finally:
        await service.close()
