"""Put an exported GGUF in the bot's models registry (running bots pick it up without a restart)."""

from __future__ import annotations

from pathlib import Path

from core.registry import ModelEntry, ModelRegistry
from core.settings import load_core_settings


def register_model(
    name: str,
    gguf: Path,
    *,
    description: str = "",
    models_file: Path | None = None,
) -> ModelEntry:
    settings = load_core_settings()
    registry = ModelRegistry(models_file or settings.resolved_models_file)
    return registry.add(name, Path(gguf), description=description)
