"""KTO and DPO: the preference half of `lorabot train` (`--method kto|dpo`).

The same steps as SFT's `build_trainer` (training/run.py), with trl's `KTOTrainer`/`DPOTrainer`:
hardware → backend → rows checked before any model loads (training/preference_data.py) → the
starting checkpoint (`--from-model` or `base_model`) → model + tokenizer → token-level checks
(another tokenizer's ids, rows too long) → `KTOConfig`/`DPOConfig` → trainer. trl renders the
conversational rows with the tokenizer's chat template itself, as the model sees them when served.

The reference model is the starting model: trl gets the model without a LoRA plus `peft_config`
(hf backend), so it keeps no second copy and computes the reference log-probs with the adapter
disabled. On a CPU that halves the memory of a naive reference.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from training.config import TrainConfig
from training.errors import DatasetError, TrainingError
from training.from_model import StartingPoint
from training.preference_data import (
    ANSWERS,
    TOKEN_SHAPES,
    PreferenceData,
    kto_weights,
    load_preference_rows,
    split_preference_rows,
)

console = Console(stderr=True)


# -- trainers ---------------------------------------------------------------------------------------
class PretokenizedRows:
    """Mixed into trl's KTO/DPO trainers. trl 1.16 always tokenizes text rows itself; rows that
    already hold its token-id columns (checked by `check_token_ids`) skip that step, and what trl
    does after tokenizing still runs (KTO: the mismatched completions of its KL term)."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        if "prompt_ids" not in dataset.column_names:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)  # type: ignore[misc]
        if getattr(self, "calculate_KL", False):

            def add_kl_completions(batch: dict[str, list]) -> dict[str, list]:
                completions = batch["completion_ids"]
                batch["KL_completion_ids"] = completions[-1:] + completions[:-1]  # trl's rotation by one
                return batch

            size = args.per_device_train_batch_size
            dataset = dataset.map(add_kl_completions, batched=True, batch_size=size)
        return dataset


def trainer_class(method: str) -> type:
    """trl's trainer for `method` with `PretokenizedRows`; looked up when called, so an Unsloth
    import that replaced trl's classes is honoured."""
    import trl

    base = {"kto": trl.KTOTrainer, "dpo": trl.DPOTrainer}[method]
    return type(f"Lorabot{base.__name__}", (PretokenizedRows, base), {})


def preference_config(
    cfg: TrainConfig,
    hw: Any,
    dtype: str,
    output_dir: Path,
    has_eval: bool,
    backend: str,
    weights: tuple[float, float] | None,
    **extra: Any,
):
    from trl import DPOConfig, KTOConfig

    from training.sft_args import trainer_kwargs

    kwargs = trainer_kwargs(cfg, hw, dtype, output_dir, has_eval)
    kwargs["beta"] = cfg.beta
    if backend == "hf" and cfg.gradient_checkpointing:  # Unsloth sets up its own
        kwargs["gradient_checkpointing"] = True
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if cfg.method == "kto":
        assert weights is not None
        kwargs["desirable_weight"], kwargs["undesirable_weight"] = weights
    kwargs.update(extra)
    return (KTOConfig if cfg.method == "kto" else DPOConfig)(**kwargs)


# -- data -------------------------------------------------------------------------------------------
def load_data(cfg: TrainConfig) -> tuple[PreferenceData, list[dict], list[dict]]:
    """(all usable rows with what was left out, train rows, held-out rows), before any model loads."""
    data = load_preference_rows(cfg.dataset, cfg.method, cfg.on_bad_row, cfg.max_train_samples)
    if data.skipped:
        console.print(f"[yellow]{data.summary()}[/yellow]")
    if cfg.eval_dataset:
        held = load_preference_rows(cfg.eval_dataset, cfg.method, cfg.on_bad_row)
        if held.tokenized != data.tokenized:
            raise DatasetError(
                f"{held.source} and {data.source} must both be text rows or both pre-tokenized ones"
            )
        data.bad_rows.update(held.bad_rows)
        if held.skipped:
            console.print(f"[yellow]{held.summary()}[/yellow]")
        train, heldout = split_preference_rows(data.rows, cfg.method, 0.0, cfg.seed)[0], held.rows
    else:
        train, heldout = split_preference_rows(data.rows, cfg.method, cfg.eval_fraction, cfg.seed)
    if cfg.max_eval_samples:
        heldout = heldout[: cfg.max_eval_samples]
    return data, train, heldout


def check_token_ids(data: PreferenceData, tokenizer: Any, sample: int = 32) -> None:
    """Pre-tokenized rows must be this base's tokens: ids inside its vocabulary, and text that
    tokenizes back to the same ids. Another model's ids fail one or the other (a Llama-3 id runs
    past SmolLM2's 49152; ids inside the range decode to text that tokenizes differently)."""
    columns = [column for column in TOKEN_SHAPES[data.method] if column != "label"]
    vocab = len(tokenizer)
    top = max(max(row[column]) for row in data.rows for column in columns)
    fix = (
        f"export the text rows instead ({'lorabot feedback export --format ' + data.method}) and let lorabot "
        "tokenize them, or tokenize with this base's tokenizer"
    )
    if top >= vocab:
        raise DatasetError(
            f"{data.source}: token id {top} is past the end of the base's vocabulary ({vocab} tokens): "
            f"a dataset for another model's tokenizer; {fix}"
        )
    checked = data.rows[:sample]
    answer = columns[1]
    differ = 0
    for row in checked:
        ids = row["prompt_ids"] + row[answer]
        text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        differ += tokenizer(text, add_special_tokens=False)["input_ids"] != ids
    if differ * 2 > len(checked):
        raise DatasetError(
            f"{data.source}: {differ} of {len(checked)} pre-tokenized rows do not tokenize back to the same "
            f"ids with the base's tokenizer: a dataset for another model's tokenizer; {fix}"
        )


def _text_length(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_lengths(rows: list[dict], method: str, tokenizer: Any, max_length: int) -> tuple[list[dict], Counter]:
    """Rows whose prompt leaves room for an answer within `max_length` (trl would drop the others
    silently: here they are counted `too_long`); longer answers are kept, cut there (`truncated`)."""
    kept, counts = [], Counter()
    for row in rows:
        if "prompt_ids" in row:
            prompt = len(row["prompt_ids"])
            longest = prompt + max(len(row[f"{column}_ids"]) for column in ANSWERS[method])
        else:
            prompt = _text_length(tokenizer, row["prompt"], generation_prompt=True)
            longest = max(
                _text_length(tokenizer, row["prompt"] + row[column], generation_prompt=False)
                for column in ANSWERS[method]
            )
        if prompt >= max_length:
            counts["too_long"] += 1
            continue
        counts["truncated"] += longest > max_length
        kept.append(row)
    return kept, +counts


def warn_model_mismatch(data: PreferenceData, start: StartingPoint | None, cfg: TrainConfig) -> str | None:
    """When the rows say which model wrote the rated answers and this run starts from another one:
    preference tuning moves a model away from answers it gave; another model's are weaker evidence."""
    if not (data.models or data.model_files):
        return None
    rated = ", ".join(sorted(data.models) or sorted(data.model_files))
    message = None
    if start is None:
        message = (
            f"the rows rate answers of {rated}; this run starts from base_model {cfg.base_model!r}, not from "
            "that model (--from-model NAME starts from a registered model)"
        )
    elif data.model_files:
        from core.fingerprint import file_identity

        identity = file_identity(start.gguf)
        if identity not in data.model_files:
            message = (
                f"the rows rate answers of model file(s) {', '.join(sorted(data.model_files))}, but "
                f"--from-model {start.name} is {identity}: its own answers were not the ones rated"
            )
    elif start.name not in data.models:
        message = f"the rows rate answers of {rated}, but this run starts from --from-model {start.name}"
    if message:
        console.print(f"[yellow]warning: {message}[/yellow]")
    return message


# -- set-up -----------------------------------------------------------------------------------------
def build_preference_trainer(cfg: TrainConfig, **extra: Any):
    """`build_trainer`'s KTO/DPO counterpart; `extra` overrides `KTOConfig`/`DPOConfig` fields."""
    from datasets import Dataset

    from training.backends import get_backend
    from training.from_model import starting_checkpoint
    from training.hardware import detect, pick_backend, pick_dtype
    from training.run import TrainerSetup, ensure_writable, report_lengths

    out = ensure_writable(cfg.resolved_output_dir)
    hw = detect()
    backend_name = pick_backend(hw, cfg.backend, cfg.load_in_4bit, cfg.preset)
    data, train_rows, eval_rows = load_data(cfg)
    backend = get_backend(backend_name)  # imports unsloth first when chosen
    dtype = pick_dtype(hw, cfg.dtype)
    console.print(
        f"[bold]lorabot train[/bold] method={cfg.method} preset={cfg.preset} backend={backend_name} "
        f"device={hw.summary} dtype={dtype}"
    )
    base, start = starting_checkpoint(cfg)
    if start is not None:
        console.print(f"starting from {start.name!r}: {start.how} ({start.checkpoint})")
    mismatch = warn_model_mismatch(data, start, cfg)

    model, tokenizer = backend.load(cfg, hw, base, dtype)
    if data.tokenized:
        check_token_ids(data, tokenizer)
    train_rows, train_lengths = fit_lengths(train_rows, cfg.method, tokenizer, cfg.max_seq_length)
    report_lengths(train_lengths, cfg.max_seq_length, "train")
    eval_rows, eval_lengths = fit_lengths(eval_rows, cfg.method, tokenizer, cfg.max_seq_length)
    report_lengths(eval_lengths, cfg.max_seq_length, "held-out")
    if not train_rows:
        raise TrainingError(
            f"no training row has room for an answer within max_seq_length={cfg.max_seq_length}"
        )
    lengths = train_lengths + eval_lengths
    bad_rows = data.bad_rows + Counter({k: v for k, v in lengths.items() if k != "truncated"})

    info: dict[str, Any] = {"method": cfg.method, "beta": cfg.beta}
    weights = None
    if cfg.method == "kto":
        from training.preference_data import check_both_labels

        labels = Counter(bool(row["label"]) for row in train_rows)
        check_both_labels(labels, f"{data.source} (training split)")
        weights = kto_weights(labels, cfg.desirable_weight, cfg.undesirable_weight)
        info.update(
            desirable_rows=labels[True],
            undesirable_rows=labels[False],
            desirable_weight=weights[0],
            undesirable_weight=weights[1],
        )
        what = f"{labels[True]} 👍 / {labels[False]} 👎 rows (weights {weights[0]} / {weights[1]})"
    else:
        info["pairs"] = len(train_rows)
        what = f"{len(train_rows)} pairs"
    if mismatch:
        info["model_mismatch"] = mismatch
    console.print(f"train: {what}; {len(eval_rows)} held out ({sum(bad_rows.values())} skipped)")

    args = preference_config(cfg, hw, dtype, out, bool(eval_rows), backend_name, weights, **extra)
    train_ds = Dataset.from_list(train_rows)
    eval_ds = Dataset.from_list(eval_rows) if eval_rows else None
    trainer = backend.preference_trainer(cfg.method, model, tokenizer, args, train_ds, eval_ds, cfg)
    return TrainerSetup(
        trainer=trainer,
        model=trainer.model,
        tokenizer=tokenizer,
        base=base,
        backend=backend_name,
        hw=hw,
        dtype=dtype,
        train_rows=len(train_rows),
        eval_rows=len(eval_rows),
        skipped_rows=sum(bad_rows.values()),
        bad_rows=dict(bad_rows),
        truncated_rows=lengths["truncated"],
        info=info,
        start=start,
    )
