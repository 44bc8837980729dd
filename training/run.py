"""`lorabot train`: config → data → model + LoRA → SFT, KTO or DPO → adapter (+ export, + register).

KTO/DPO's set-up is `training/preference.py`; `train` runs either and writes the same run folder.

Layout of a run folder (`--output`, default out/<preset>):
    run.json          config, base checkpoint, backend, metrics (what `lorabot export` reads)
    metrics.jsonl     one line per logged step (loss, eval_loss, lr, ...)
    checkpoints/      trainer checkpoints (`--resume` continues from the latest)
    adapter/          the LoRA adapter alone (+ tokenizer)
    merged/, model-f16.gguf, model-<quant>.gguf   written by the export step
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from training.config import TrainConfig
from training.conversations import describe_bad_rows, load_conversations, split_heldout
from training.errors import DatasetError, OutputDirError, TrainingError

console = Console(stderr=True)


@dataclass
class RunResult:
    output_dir: Path
    adapter_dir: Path
    backend: str
    device: str
    dtype: str
    train_rows: int
    eval_rows: int
    skipped_rows: int
    bad_rows: dict[str, int] = field(default_factory=dict)  # kind -> rows left out (BAD_ROW_KINDS, too_long)
    truncated_rows: int = 0  # kept, cut at max_seq_length
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    train_loss: float | None = None
    seconds: float = 0.0
    exported: dict[str, Any] = field(default_factory=dict)
    method: str = "sft"
    # KTO/DPO: label counts and weights, beta, the held-out rewards/accuracies trl logs (eval_*)
    preference: dict[str, Any] = field(default_factory=dict)
    from_model: dict[str, Any] | None = None  # --from-model: which file, and how its weights were found


def ensure_writable(folder: Path) -> Path:
    """Fail early with a clear message rather than after an hour of training."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise OutputDirError(
            f"output directory {folder} is not writable: {error.strerror or error}"
        ) from error
    return folder


@dataclass
class Data:
    """The conversations of a run, checked before any model is loaded, and what was left out."""

    train: list
    eval: list
    skipped: int
    bad_rows: Counter  # kind -> rows (BAD_ROW_KINDS)


def _conversations(spec: str, on_bad_row: str, limit: int | None = None):
    """`load_conversations`, with a file of KTO/DPO rows named as such rather than as N bad rows."""
    try:
        return load_conversations(spec, on_bad_row, limit)
    except DatasetError as error:
        from training.conversations import looks_like_path, read_rows, resolve_source
        from training.preference_data import sniff_format, wrong_format_message

        source = resolve_source(spec)
        if not looks_like_path(source) or not Path(source).expanduser().is_file():
            raise
        shape = sniff_format(read_rows(spec))
        if shape is None or shape[0] == "sft":
            raise
        raise DatasetError(wrong_format_message(source, shape[0], "sft")) from error


def load_data(cfg: TrainConfig) -> Data:
    """Train and held-out conversations; bad rows are counted by kind and reported, never fatal
    (unless on_bad_row = "error")."""
    train = _conversations(cfg.dataset, cfg.on_bad_row, cfg.max_train_samples)
    bad_rows = Counter(train.bad_rows)
    if train.skipped:
        console.print(f"[yellow]{train.summary()}[/yellow]")
    if cfg.eval_dataset:
        held = _conversations(cfg.eval_dataset, cfg.on_bad_row)
        bad_rows.update(held.bad_rows)
        if held.skipped:
            console.print(f"[yellow]{held.summary()}[/yellow]")
        train_rows, eval_rows = train.conversations, held.conversations
    else:
        train_rows, eval_rows = split_heldout(train.conversations, cfg.eval_fraction, cfg.seed)
    if cfg.max_eval_samples:
        eval_rows = eval_rows[: cfg.max_eval_samples]
    return Data(train_rows, eval_rows, sum(bad_rows.values()), bad_rows)


def report_lengths(counts: Counter, max_length: int, what: str) -> None:
    """One line for the conversations longer than max_seq_length (cut, or dropped when no reply was left)."""
    if counts.get("truncated") or counts.get("too_long"):
        console.print(
            f"[yellow]{counts['truncated'] + counts['too_long']} {what} conversation(s) longer than "
            f"max_seq_length={max_length} tokens: {counts['truncated']} truncated, "
            f"{counts['too_long']} dropped "
            "(no reply token left)[/yellow]"
        )
    if counts.get("nothing_to_learn"):
        console.print(
            f"[yellow]{counts['nothing_to_learn']} {what} conversation(s) dropped: "
            "no reply token to learn[/yellow]"
        )


def metrics_callback(path: Path):
    """A TrainerCallback appending every log (loss, eval_loss, lr, ...) to metrics.jsonl."""
    from transformers import TrainerCallback

    class MetricsLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs) -> None:
            if logs:
                with open(path, "a", encoding="utf-8") as out:
                    out.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return MetricsLog()


@dataclass
class TrainerSetup:
    """What `build_trainer` made: the trainer, ready to `.train()`, and what it was made from."""

    trainer: Any
    model: Any  # with its LoRA
    tokenizer: Any
    base: Path | str
    backend: str
    hw: Any
    dtype: str
    train_rows: int
    eval_rows: int
    skipped_rows: int
    bad_rows: dict[str, int] = field(default_factory=dict)
    truncated_rows: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # KTO/DPO: labels, weights, beta (run.json)
    start: Any = None  # training.from_model.StartingPoint when --from-model gave the checkpoint

    @property
    def has_eval(self) -> bool:
        return self.eval_rows > 0


def build_trainer(cfg: TrainConfig, **sft_extra: Any) -> TrainerSetup:
    """The one set-up of a fine-tune, shared by `lorabot train` and `lorabot bench train`.

    Hardware → backend (checked before any download) → data (checked before any model loads) →
    backend import (Unsloth first, when chosen) → base checkpoint → model + tokenizer → encoded
    rows with assistant-only labels → LoRA → `SFTConfig` → trainer. `sft_extra` overrides
    `SFTConfig` fields (the benchmark turns off saving; `train` sets `disable_tqdm`)."""
    out = ensure_writable(cfg.resolved_output_dir)
    from training.hardware import detect, pick_backend, pick_dtype

    hw = detect()
    backend_name = pick_backend(hw, cfg.backend, cfg.load_in_4bit, cfg.preset)  # before any download
    data = load_data(cfg)
    from training.backends import get_backend

    backend = get_backend(backend_name)  # imports unsloth first when chosen
    if hw.cuda and not cfg.cudnn_attention:
        import torch

        torch.backends.cuda.enable_cudnn_sdp(False)  # SDPA picks flash (or mem-efficient) instead
    if backend_name == "unsloth" and cfg.varlen_attention:
        from training.backends.unsloth_backend import use_torch_varlen

        console.print(f"varlen attention for packed rows: {use_torch_varlen()}")
    dtype = pick_dtype(hw, cfg.dtype)
    console.print(
        f"[bold]lorabot train[/bold] preset={cfg.preset} backend={backend_name} "
        f"device={hw.summary} dtype={dtype}"
    )

    from training.chat_format import encode_all
    from training.from_model import starting_checkpoint
    from training.sft_args import sft_config

    base, start = starting_checkpoint(cfg)
    if start is not None:
        console.print(f"starting from {start.name!r}: {start.how} ({start.checkpoint})")
    model, tokenizer = backend.load(cfg, hw, base, dtype)
    train_ds, train_lengths = encode_all(tokenizer, data.train, cfg.max_seq_length, "tokenizing train")
    report_lengths(train_lengths, cfg.max_seq_length, "train")
    eval_ds, eval_lengths = (
        encode_all(tokenizer, data.eval, cfg.max_seq_length, "tokenizing eval")
        if data.eval
        else (None, Counter())
    )
    report_lengths(eval_lengths, cfg.max_seq_length, "held-out")
    if len(train_ds) == 0:
        raise TrainingError("no training row has an assistant reply left within max_seq_length")
    lengths = train_lengths + eval_lengths
    bad_rows = data.bad_rows + Counter({k: v for k, v in lengths.items() if k != "truncated"})
    skipped = sum(bad_rows.values())
    console.print(
        f"{len(train_ds)} train / {len(eval_ds) if eval_ds else 0} held-out conversations ({skipped} skipped)"
    )

    model = backend.add_lora(model, cfg)
    args = sft_config(cfg, hw, dtype, out, has_eval=eval_ds is not None, **sft_extra)
    trainer = backend.trainer(model, tokenizer, args, train_ds, eval_ds)
    return TrainerSetup(
        trainer=trainer,
        model=model,
        tokenizer=tokenizer,
        base=base,
        backend=backend_name,
        hw=hw,
        dtype=dtype,
        train_rows=len(train_ds),
        eval_rows=len(eval_ds) if eval_ds else 0,
        skipped_rows=skipped,
        bad_rows=dict(bad_rows),
        truncated_rows=lengths["truncated"],
        start=start,
    )


def train(cfg: TrainConfig, resume: bool | str = False, progress: bool = True) -> RunResult:
    """Run one fine-tune (SFT, KTO or DPO: `cfg.method`); returns where everything went and the
    eval loss before/after (KTO/DPO: after only; before training the policy is the reference)."""
    started = time.time()
    if cfg.method == "sft":
        setup = build_trainer(cfg, disable_tqdm=not progress)
    else:
        from training.preference import build_preference_trainer

        setup = build_preference_trainer(cfg, disable_tqdm=not progress)
    out, trainer, tokenizer = cfg.resolved_output_dir, setup.trainer, setup.tokenizer
    trainer.add_callback(metrics_callback(out / "metrics.jsonl"))

    preference = cfg.method != "sft"
    before = trainer.evaluate()["eval_loss"] if setup.has_eval and not resume and not preference else None
    try:
        stats = trainer.train(resume_from_checkpoint=resume or None)
    except ValueError as error:
        if "checkpoint" in str(error).lower():
            raise TrainingError(f"cannot resume: {error} (looked in {out / 'checkpoints'})") from error
        raise
    final = trainer.evaluate() if setup.has_eval else {}
    after = final.get("eval_loss")

    adapter_dir = out / "adapter"
    # the trained adapter alone (a model passed wrapped to trl's KTO/DPO also holds a frozen "ref" copy)
    trainer.model.save_pretrained(adapter_dir, **({"selected_adapters": ["default"]} if preference else {}))
    tokenizer.save_pretrained(adapter_dir)
    result = RunResult(
        output_dir=out,
        adapter_dir=adapter_dir,
        backend=setup.backend,
        device=setup.hw.device_name,
        dtype=setup.dtype,
        train_rows=setup.train_rows,
        eval_rows=setup.eval_rows,
        skipped_rows=setup.skipped_rows,
        bad_rows=setup.bad_rows,
        truncated_rows=setup.truncated_rows,
        eval_loss_before=before,
        eval_loss_after=after,
        train_loss=stats.training_loss,
        seconds=round(time.time() - started, 1),
        method=cfg.method,
        preference=(
            {**setup.info, **{k: v for k, v in final.items() if _preference_metric(k)}} if preference else {}
        ),
        from_model=setup.start.record() if setup.start is not None else None,
    )
    write_run_file(out, cfg, setup.base, result)
    console.print(
        f"[green]trained[/green] {cfg.method} {result.seconds:.0f}s, train loss {result.train_loss:.3f}"
        + (f", eval loss {before:.3f} → {after:.3f}" if before is not None and after is not None else "")
        + (f", eval loss {after:.3f}" if before is None and after is not None else "")
        + f"; adapter in {adapter_dir}"
    )
    if result.bad_rows or result.truncated_rows:
        console.print(
            "[yellow]data: "
            + (describe_bad_rows(result.bad_rows, cfg.dataset) if result.bad_rows else "no bad rows")
            + (
                f"; {result.truncated_rows} truncated to {cfg.max_seq_length} tokens"
                if result.truncated_rows
                else ""
            )
            + " (run.json: result.bad_rows)[/yellow]"
        )
    return result


def _preference_metric(key: str) -> bool:
    """trl's held-out figures worth keeping (loss, rewards, log-probs, KL), not its timings."""
    return key.startswith("eval_") and not key.endswith(("runtime", "per_second", "num_tokens"))


def write_run_file(out: Path, cfg: TrainConfig, base: Path | str, result: RunResult) -> None:
    record = {
        "config": cfg.model_dump(mode="json"),
        "base": str(Path(base).resolve()) if Path(str(base)).exists() else str(base),
        "result": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()},
    }
    (out / "run.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
