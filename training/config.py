"""One validated training config: preset file < user config file (TOML/YAML) < CLI flags.

Presets live as plain TOML in `training/presets/` so a user can copy one as a starting point.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from training.errors import ConfigError

PRESETS_DIR = Path(__file__).parent / "presets"
METHODS = ("sft", "kto", "dpo")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(BaseModel, extra="forbid"):
    """Everything a run needs; defaults are the original notebook's where it had one."""

    preset: str = "tiny"
    method: Literal["sft", "kto", "dpo"] = "sft"  # SFTTrainer | KTOTrainer | DPOTrainer
    # what to tune
    base_model: str = "embedded"  # "embedded" | hub id | local dir | file.gguf | "random:llama-3.2-1b"
    tokenizer: str | None = None  # only for random:* bases (default: the embedded model's)
    chat_template: str = "model"  # "model" (the base's own) | "llama-3.1" | "chatml"
    load_in_4bit: bool = False
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    backend: Literal["auto", "unsloth", "hf"] = "auto"
    # a REGISTERED model to start from (overrides base_model): its run's merged checkpoint when
    # `lorabot train` exported it, else its GGUF through the GGUF -> checkpoint path (training/from_model.py)
    from_model: str | None = None
    # data
    dataset: str = "builtin:train"
    eval_dataset: str | None = None  # None: hold out `eval_fraction` of `dataset`
    eval_fraction: float = Field(0.02, ge=0, lt=1)
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(64, ge=1)
    on_bad_row: Literal["skip", "error"] = "skip"
    # LoRA
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS))
    bias: Literal["none", "all", "lora_only"] = "none"
    gradient_checkpointing: bool | Literal["unsloth"] = "unsloth"
    # optimisation
    seed: int = 3407
    max_seq_length: int = Field(1024, ge=16)
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(4, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(5, ge=0)
    max_steps: int | None = Field(60, ge=1)  # None: train for `epochs`
    epochs: float = Field(1.0, gt=0)
    weight_decay: float = 0.01
    lr_scheduler: str = "linear"
    optim: str = "adamw_8bit"
    packing: bool = False
    # preference tuning (method kto/dpo): beta = how far from the reference (the starting model) the
    # tune may move; KTO's weights default to balancing the 👍/👎 counts (trl's advice), see preference.py
    beta: float = Field(0.1, gt=0)
    desirable_weight: float | None = Field(None, gt=0)
    undesirable_weight: float | None = Field(None, gt=0)
    # False: SDPA stays off cuDNN attention (CUDA). Packed rows run attention once per document, and
    # a cuDNN call cost ~0.5 ms of host time each on an H200 (docs/benchmarks.md, Training (GPU)).
    cudnn_attention: bool = True
    # True (unsloth backend): packed rows run attention once per layer through torch's varlen flash
    # kernel, which Unsloth takes by itself only from torch 2.12 (training/backends/unsloth_backend.py).
    varlen_attention: bool = False
    # bookkeeping
    logging_steps: int = Field(1, ge=1)
    eval_steps: int | None = Field(None, ge=1)  # None: evaluate at the end only
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    output_dir: Path | None = None  # default out/<preset>
    # export
    export: bool = True
    quantization: str = "q4_k_m"
    register_name: str | None = None  # --register NAME
    description: str = ""

    @model_validator(mode="after")
    def _preference_needs(self) -> TrainConfig:
        if self.method == "kto" and self.batch_size < 2:
            # trl's KTO estimates its KL term from the other rows of the same micro-batch
            raise ValueError("KTO needs batch_size >= 2 (its KL term comes from the other rows of a batch)")
        if self.method != "sft" and self.packing:
            raise ValueError(f"packing is for SFT; {self.method} rows are (prompt, answer) pairs")
        return self

    @property
    def resolved_output_dir(self) -> Path:
        return self.output_dir or Path("out") / self.preset


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.toml"))


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or YAML config; the message says which file and why when it can't."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except Exception as error:  # tomllib / yaml parse errors have no common base
        raise ConfigError(f"{path}: cannot parse config: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a table/mapping of settings")
    return data


def read_preset(name: str) -> dict[str, Any]:
    """A preset file's settings, as written (the benchmark reads them too)."""
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def build_config(preset: str | None = None, config_file: Path | None = None, **overrides: Any) -> TrainConfig:
    """Merge preset < file < overrides (None values in overrides mean 'not given').

    Without a preset, a KTO/DPO run takes `tiny-kto`/`tiny-dpo` (an SFT preset's learning rate is
    far too high for preference tuning), an SFT run `tiny`."""
    from_file = read_config_file(config_file) if config_file else {}
    method = overrides.get("method") or from_file.get("method")
    name = preset or from_file.get("preset") or (f"tiny-{method}" if method in ("kto", "dpo") else "tiny")
    merged: dict[str, Any] = {**read_preset(name), **from_file}
    merged.update({key: value for key, value in overrides.items() if value is not None})
    merged["preset"] = name
    try:
        return TrainConfig(**merged)
    except ValidationError as error:
        lines = [
            f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
            if e["loc"]
            else str(e["msg"]).removeprefix("Value error, ")  # a rule between fields (_preference_needs)
            for e in error.errors()
        ]
        raise ConfigError("bad training config:\n  " + "\n  ".join(lines)) from error
