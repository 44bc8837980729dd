"""Typer-annotated entry points that lorabot/cli.py mounts as `lorabot train` and `lorabot export`
(`lorabot bench train` lives in bench/train.py). Import-light on purpose: torch & co. load only
when a command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from training.config import PRESETS_DIR, preset_names
from training.errors import TrainingError

console = Console(stderr=True)


def _fail(error: TrainingError) -> typer.Exit:
    console.print(f"[red]error:[/red] {error}")
    return typer.Exit(2)


PUSH_OPTION = typer.Option(
    "--push-to-hub",
    metavar="REPO",
    help="Upload the LoRA adapter and the GGUF to this Hugging Face repo (owner/name; token from $HF_TOKEN).",
)


def _push(run_dir: Path, repo: str) -> None:
    from training.hub import push_run

    console.print(f"pushing {run_dir} to {repo}")
    console.print(f"[green]pushed[/green] {push_run(run_dir, repo)}")


def _check_preset(name: str | None) -> str | None:
    if name is not None and name not in preset_names():
        raise typer.BadParameter(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return name


def _check_method(name: str | None) -> str | None:
    from training.config import METHODS

    if name is not None and name not in METHODS:
        raise typer.BadParameter(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return name


def train(
    preset: Annotated[
        str | None,
        typer.Option(
            help=f"One of: {', '.join(preset_names())} "
            f"(the files in {PRESETS_DIR.parent.name}/{PRESETS_DIR.name}/); "
            "default tiny (tiny-kto / tiny-dpo with --method kto / dpo), the ones for a CPU.",
            callback=_check_preset,
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML or YAML file of settings.")] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="sft (conversations), kto (👍/👎 rows) or dpo (chosen/rejected pairs): "
            "the formats of `lorabot feedback export --format`.",
            callback=_check_method,
        ),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Local .json/.jsonl/.parquet file or hub id.")] = None,
    eval_dataset: Annotated[
        str | None, typer.Option(help="Held-out file; default: split off the dataset.")
    ] = None,
    base_model: Annotated[
        str | None, typer.Option(help="embedded, FILE.gguf, a folder, hub id, random:llama-3.2-1b.")
    ] = None,
    from_model: Annotated[
        str | None,
        typer.Option(
            help="Start from this registered model (e.g. the one being served): its run's checkpoint "
            "when lorabot trained it, else its GGUF. Overrides --base-model."
        ),
    ] = None,
    beta: Annotated[
        float | None, typer.Option(help="KTO/DPO: how far the tune may move from the starting model.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps (overrides --epochs).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs to train when no --max-steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Micro-batch size per step.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    packing: Annotated[
        bool | None, typer.Option("--packing/--no-packing", help="Padding-free packing.")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="auto, unsloth or hf.")] = None,
    output: Annotated[Path | None, typer.Option(help="Run folder (default out/<preset>).")] = None,
    on_bad_row: Annotated[str | None, typer.Option(help="skip or error.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint in --output.")
    ] = False,
    export: Annotated[
        bool | None, typer.Option("--export/--no-export", help="Merge + GGUF + quantize after training.")
    ] = None,
    register: Annotated[
        str | None, typer.Option(help="Add the exported GGUF to the models registry as NAME.")
    ] = None,
    push_to_hub: Annotated[str | None, PUSH_OPTION] = None,
) -> None:
    """Fine-tune a LoRA adapter (SFT on conversations, KTO/DPO on the chats' ratings), export it to
    GGUF q4_k_m, optionally register it."""
    from training.config import build_config
    from training.run import train as run_train

    try:
        if push_to_hub:  # token and repo checked before hours of training, not after
            from training.hub import prepare_push

            console.print(f"will push to {push_to_hub} as {prepare_push(push_to_hub)}")
        if max_steps is None and epochs is not None:
            max_steps_override: dict = {"max_steps": None}
        else:
            max_steps_override = {}
        cfg = build_config(
            preset,
            config,
            method=method,
            dataset=dataset,
            eval_dataset=eval_dataset,
            base_model=base_model,
            from_model=from_model,
            beta=beta,
            max_steps=max_steps,
            epochs=epochs,
            batch_size=batch_size,
            grad_accum=grad_accum,
            learning_rate=learning_rate,
            packing=packing,
            backend=backend,
            output_dir=output,
            on_bad_row=on_bad_row,
            export=export,
            register_name=register,
        )
        if max_steps_override:
            cfg = cfg.model_copy(update=max_steps_override)
        run_train(cfg, resume=resume)
        if cfg.export:
            from training.export import export_run

            export_run(cfg.resolved_output_dir, cfg.quantization, cfg.register_name, cfg.description)
        elif cfg.register_name:
            console.print(
                "[yellow]--register needs an export; run `lorabot export --register NAME` later[/yellow]"
            )
        if push_to_hub:
            _push(cfg.resolved_output_dir, push_to_hub)
    except TrainingError as error:
        raise _fail(error) from None


def export(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by `lorabot train`.")],
    quantization: Annotated[str, typer.Option(help="q4_k_m, q5_k_m, q8_0 or none (f16 only).")] = "q4_k_m",
    register: Annotated[
        str | None, typer.Option(help="Add the result to the models registry as NAME.")
    ] = None,
    description: Annotated[str, typer.Option(help="Shown next to the model in /model.")] = "",
    push_to_hub: Annotated[str | None, PUSH_OPTION] = None,
) -> None:
    """Merge a run's LoRA adapter into its base, convert to GGUF and quantize
    (offline unless --push-to-hub)."""
    from training.export import export_run

    try:
        if push_to_hub:
            from training.hub import prepare_push

            prepare_push(push_to_hub)
        export_run(run_dir, None if quantization == "none" else quantization, register, description)
        if push_to_hub:
            _push(run_dir, push_to_hub)
    except TrainingError as error:
        raise _fail(error) from None


def save_tokenizer(
    folder: Annotated[Path, typer.Argument(help="Where to write it, e.g. .gpu/tokenizer.")],
    base_model: Annotated[
        str, typer.Option(help="Whose tokenizer: embedded, FILE.gguf, a folder.")
    ] = "embedded",
) -> None:
    """Save a base model's tokenizer (default: the embedded SmolLM2's, repaired as for training).

    `random:*` bases take this tokenizer: on a GPU host without the embedded model, point
    `tokenizer =` in the config (or $LORABOT_RANDOM_TOKENIZER) at the folder written here."""
    from transformers import AutoTokenizer

    from training.base_model import resolve_base

    try:
        AutoTokenizer.from_pretrained(resolve_base(base_model)).save_pretrained(folder)
    except TrainingError as error:
        raise _fail(error) from None
    console.print(f"tokenizer of {base_model} saved in {folder}")


def app():
    """A stand-alone app (`python -m training.cli ...`) for hosts without the bot extras (the
    benchmark's stand-alone form is `python -m bench.train`)."""
    standalone = typer.Typer(no_args_is_help=True, add_completion=False)
    standalone.command("train")(train)
    standalone.command("export")(export)
    standalone.command("save-tokenizer")(save_tokenizer)
    return standalone


if __name__ == "__main__":
    app()()
