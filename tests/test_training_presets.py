"""Every preset file in training/presets/ builds a valid, consistent config, without training.

A preset is only read when someone runs it (the GPU ones on a GPU host), so a typo, a key the
config does not know, a LoRA rank of 0 or a row of docs/training.md that says otherwise would
otherwise surface there, after the downloads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from training.base_model import LLAMA_SHAPES
from training.chat_format import TEMPLATES
from training.config import LORA_TARGETS, PRESETS_DIR, TrainConfig, build_config
from training.errors import HardwareError
from training.hardware import Hardware, pick_backend, pick_dtype

CPU = Hardware(cuda=False, device_name="CPU", bf16=False, unsloth=False, bitsandbytes=False)
GPU = Hardware(cuda=True, device_name="H100", bf16=True, unsloth=True, bitsandbytes=True)
DOCS = Path(__file__).parent.parent / "docs" / "training.md"
PRESET_FILES = sorted(PRESETS_DIR.glob("*.toml"))


def documented_presets() -> dict[str, dict[str, str]]:
    """The rows of docs/training.md's "Presets" table: name -> base, lora, data, where."""
    section = DOCS.read_text(encoding="utf-8").split("## Presets", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and (name := re.fullmatch(r"`([\w-]+)`", cells[0])):
            rows[name.group(1)] = dict(zip(("base", "lora", "data", "where"), cells[1:], strict=True))
    return rows


def is_cpu_preset(cfg: TrainConfig) -> bool:
    return cfg.base_model == "embedded"  # the only base small enough for a CPU run


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda path: path.stem)
def test_every_preset_builds_a_valid_consistent_config(path: Path):
    name = path.stem
    written = tomllib.loads(path.read_text(encoding="utf-8"))
    cfg = build_config(name)  # extra="forbid": a misspelt key fails here
    assert cfg.preset == name and cfg.resolved_output_dir == Path("out") / name
    for key, value in written.items():  # what the file says is what a run gets
        assert getattr(cfg, key) == value, key

    # the base model is one lorabot knows, with the chat template that goes with it
    assert cfg.chat_template in {"model", *TEMPLATES}
    if cfg.base_model == "embedded":
        assert cfg.chat_template == "model"  # SmolLM2's own ChatML, as the bot serves it
    else:
        owner, model = cfg.base_model.split("/")
        shape = re.sub(r"-instruct$", "", model.lower())
        assert owner == "unsloth" and shape in LLAMA_SHAPES, (
            cfg.base_model
        )  # `random:<shape>` stands in offline
        assert cfg.chat_template == "llama-3.1"

    # LoRA and the schedule
    assert cfg.lora_r > 0 and cfg.lora_alpha >= cfg.lora_r
    assert cfg.target_modules and set(cfg.target_modules) <= set(LORA_TARGETS)
    assert cfg.max_steps is not None and 0 <= cfg.warmup_steps < cfg.max_steps
    assert cfg.eval_steps is None or cfg.eval_steps <= cfg.max_steps
    sequences_per_row = 2 if cfg.method == "dpo" else 1  # a DPO row is a pair: chosen and rejected
    assert cfg.batch_size * cfg.grad_accum * sequences_per_row >= 8  # every preset steps on 8+ sequences

    # where it runs: tiny ones on any CPU, the others need CUDA and say so before any download
    assert pick_dtype(CPU, cfg.dtype) == "fp32"
    if is_cpu_preset(cfg):
        assert not cfg.load_in_4bit and not cfg.varlen_attention
        assert pick_backend(CPU, cfg.backend, cfg.load_in_4bit, name) == "hf"
        if cfg.method == "sft":  # KTO/DPO presets take the chats' export (--dataset): no shipped default
            assert cfg.dataset.startswith("builtin:")
        assert (cfg.eval_dataset or "builtin:").startswith("builtin:")
    else:
        assert pick_backend(GPU, cfg.backend, cfg.load_in_4bit, name) == "unsloth"
        assert cfg.load_in_4bit or cfg.varlen_attention  # a CUDA-only path: 4-bit, or the varlen kernel
        if cfg.load_in_4bit:
            with pytest.raises(HardwareError, match=f"preset '{name}' .* needs an NVIDIA GPU.*--preset tiny"):
                pick_backend(CPU, cfg.backend, cfg.load_in_4bit, name)

    # the library takes its optimizer and schedule names (checked by the trainer only at its start)
    training_args = pytest.importorskip("transformers.training_args")
    trainer_utils = pytest.importorskip("transformers.trainer_utils")
    training_args.OptimizerNames(cfg.optim)
    trainer_utils.SchedulerType(cfg.lr_scheduler)


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda path: path.stem)
def test_docs_training_md_describes_every_preset_as_it_is(path: Path):
    name = path.stem
    docs = documented_presets()
    assert name in docs, f"docs/training.md's Presets table has no row for {name}"
    row, cfg = docs[name], build_config(name)
    assert row["lora"] == f"r={cfg.lora_r}, α={cfg.lora_alpha}"
    base = re.fullmatch(r"as `([\w-]+)`", row["base"])
    described = build_config(base.group(1)) if base else cfg  # "as `baseline`"
    assert described.base_model == cfg.base_model and described.load_in_4bit == cfg.load_in_4bit
    if not base:
        assert ("embedded" if cfg.base_model == "embedded" else cfg.base_model) in row["base"]
        assert ("4-bit" in row["base"]) == cfg.load_in_4bit
    assert ("CPU" in row["where"]) == is_cpu_preset(cfg) and ("CUDA" in row["where"]) != is_cpu_preset(cfg)
    if not row["data"].startswith("as `"):
        assert (cfg.dataset in row["data"]) or (
            cfg.dataset.startswith("builtin:") and "shipped" in row["data"]
        )
