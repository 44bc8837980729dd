"""`--from-model NAME`: start a tune from a model of the bot's registry (usually the one being served).

A GGUF that `lorabot train` exported sits in its run folder (run.json, adapter/, merged/): the tune
starts from that run's merged checkpoint, the exact weights the GGUF was converted from (merged
afresh from the run's base + adapter when merged/ is missing or older than the adapter). Any other
GGUF (the embedded model, a pulled one) goes through the GGUF → checkpoint path of
`training/base_model.py`. Either way the result is a plain checkpoint folder: a new LoRA goes on
top, and for KTO/DPO that checkpoint with the adapter switched off is the reference model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from training.errors import ConfigError

if TYPE_CHECKING:
    from training.config import TrainConfig


@dataclass(frozen=True)
class StartingPoint:
    """Where a `--from-model` tune starts, for the log and run.json."""

    name: str
    gguf: Path
    checkpoint: Path
    run_dir: Path | None  # the `lorabot train` run that exported `gguf`, if it was one
    how: str  # "run's merged checkpoint" | "run's base + adapter, merged" | "GGUF → checkpoint"

    def record(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "gguf": str(self.gguf),
            "checkpoint": str(self.checkpoint),
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "how": self.how,
        }


def registered_gguf(name: str, models_file: Path | None = None) -> Path:
    """The GGUF file registered as `name`; a ConfigError naming the registered ones otherwise."""
    from core.errors import UnknownModel
    from core.registry import ModelRegistry, RegistryError
    from core.settings import load_core_settings

    registry = ModelRegistry(models_file or load_core_settings().resolved_models_file)
    try:
        entry = registry.get(name)
    except UnknownModel as error:
        known = ", ".join(error.valid) or "none"
        raise ConfigError(
            f"--from-model {name!r} is not a registered model; registered: {known} (lorabot models list)"
        ) from None
    except RegistryError as error:
        raise ConfigError(f"--from-model {name!r}: cannot read the models registry: {error}") from None
    if entry.path is None:
        raise ConfigError(
            f"--from-model {name!r} is served by an endpoint (urls), not a GGUF file here: "
            "there are no weights to start from"
        )
    if not entry.path.is_file():
        raise ConfigError(f"--from-model {name!r}: its file {entry.path} does not exist")
    return entry.path


def exporting_run(gguf: Path) -> Path | None:
    """The run folder that exported `gguf` (`lorabot export` writes model-*.gguf next to run.json)."""
    folder = gguf.resolve().parent
    if (folder / "run.json").is_file() and (folder / "adapter" / "adapter_config.json").is_file():
        return folder
    return None


def _fresh(merged: Path, adapter: Path) -> bool:
    weights = [p for p in merged.glob("*.safetensors")] + [p for p in merged.glob("*.bin")]
    adapter_files = list(adapter.glob("adapter_model.*"))
    if not (merged / "config.json").is_file() or not weights:
        return False
    return min(p.stat().st_mtime for p in weights) >= max(
        (p.stat().st_mtime for p in adapter_files), default=0.0
    )


def _merge_run(run_dir: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    from training.export import merge_adapter

    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    merged, _ = merge_adapter(record["base"], run_dir / "adapter")
    merged.save_pretrained(out)  # fp32: a starting point, not a deliverable
    AutoTokenizer.from_pretrained(run_dir / "adapter").save_pretrained(out)


def resolve_from_model(name: str, models_file: Path | None = None) -> StartingPoint:
    from training.base_model import _file_key, _materialise, resolve_base

    gguf = registered_gguf(name, models_file)
    run_dir = exporting_run(gguf)
    if run_dir is None:
        checkpoint = Path(resolve_base(str(gguf)))
        return StartingPoint(name, gguf, checkpoint, None, "GGUF → checkpoint")
    merged = run_dir / "merged"
    if _fresh(merged, run_dir / "adapter"):
        return StartingPoint(name, gguf, merged, run_dir, "run's merged checkpoint")
    adapter_weights = next(iter(sorted((run_dir / "adapter").glob("adapter_model.*"))), None)
    key = f"run-{run_dir.name}-{_file_key(adapter_weights or run_dir / 'run.json')}"
    checkpoint = _materialise(key, lambda out: _merge_run(run_dir, out))
    return StartingPoint(name, gguf, checkpoint, run_dir, "run's base + adapter, merged")


def starting_checkpoint(cfg: TrainConfig) -> tuple[Path | str, StartingPoint | None]:
    """(the checkpoint a run loads, how `--from-model` found it or None): `from_model` wins over
    `base_model`."""
    if cfg.from_model:
        start = resolve_from_model(cfg.from_model)
        return start.checkpoint, start
    from training.base_model import resolve_base

    return resolve_base(cfg.base_model, cfg.tokenizer, cfg.seed), None
