"""The one `SFTConfig` both backends use (trl ≥ 1: `max_length=`, packing is padding-free BFD), and the
fields it shares with the KTO/DPO configs (training/preference.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.hardware import Hardware


def pick_optim(name: str, hw: Hardware) -> str:
    """8-bit Adam needs bitsandbytes on CUDA; elsewhere plain AdamW does the same job."""
    if "8bit" in name and not (hw.cuda and importlib.util.find_spec("bitsandbytes")):
        return "adamw_torch"
    return name


def trainer_kwargs(
    cfg: TrainConfig, hw: Hardware, dtype: str, output_dir: Path, has_eval: bool
) -> dict[str, Any]:
    """The `TrainingArguments` fields every lorabot run sets alike (SFT, KTO and DPO)."""
    evaluate = has_eval and cfg.eval_steps is not None
    return dict(
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        optim=pick_optim(cfg.optim, hw),
        seed=cfg.seed,
        max_steps=cfg.max_steps or -1,
        num_train_epochs=cfg.epochs,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=cfg.eval_steps if evaluate else None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        bf16=dtype == "bf16",  # explicit: trl defaults to bf16, 11x slower on our CPUs
        fp16=dtype == "fp16",
        use_cpu=not hw.cuda,
        report_to="none",
        max_length=cfg.max_seq_length,
        dataset_num_proc=None,
        dataloader_num_workers=0,
        gradient_checkpointing=False,  # the backend sets it up (Unsloth has its own)
    )


def sft_config(cfg: TrainConfig, hw: Hardware, dtype: str, output_dir: Path, has_eval: bool, **extra: Any):
    from trl import SFTConfig

    kwargs = trainer_kwargs(cfg, hw, dtype, output_dir, has_eval)
    kwargs["packing"] = cfg.packing
    kwargs.update(extra)
    return SFTConfig(**kwargs)
