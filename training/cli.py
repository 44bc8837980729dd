"""Typer-annotated entry points that bots/cli.py mounts as `lorabot train`, `lorabot export` and
`lorabot bench train`. Import-light on purpose: torch & co. load only when a command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from training.errors import TrainingError

console = Console(stderr=True)


def _fail(error: TrainingError) -> typer.Exit:
    console.print(f"[red]error:[/red] {error}")
    return typer.Exit(2)


def train(
    preset: Annotated[Optional[str], typer.Option(help="tiny (CPU, offline), baseline (1B) or improved (3B).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML or YAML file of settings.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Local .json/.jsonl/.parquet file or hub id.")] = None,
    eval_dataset: Annotated[Optional[str], typer.Option(help="Held-out file; default: split off the dataset.")] = None,
    base_model: Annotated[Optional[str], typer.Option(help="embedded, FILE.gguf, a folder, hub id, random:llama-3.2-1b.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (overrides --epochs).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Epochs to train when no --max-steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Micro-batch size per step.")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Gradient accumulation steps.")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    packing: Annotated[Optional[bool], typer.Option("--packing/--no-packing", help="Padding-free packing.")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto, unsloth or hf.")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Run folder (default out/<preset>).")] = None,
    on_bad_row: Annotated[Optional[str], typer.Option(help="skip or error.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --output.")] = False,
    export: Annotated[Optional[bool], typer.Option("--export/--no-export", help="Merge + GGUF + quantize after training.")] = None,
    register: Annotated[Optional[str], typer.Option(help="Add the exported GGUF to the models registry as NAME.")] = None,
) -> None:
    """Fine-tune a LoRA adapter on chat conversations, export it to GGUF q4_k_m, optionally register it."""
    from training.config import build_config
    from training.run import train as run_train

    try:
        if max_steps is None and epochs is not None:
            max_steps_override: dict = {"max_steps": None}
        else:
            max_steps_override = {}
        cfg = build_config(
            preset, config, dataset=dataset, eval_dataset=eval_dataset, base_model=base_model,
            max_steps=max_steps, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
            learning_rate=learning_rate, packing=packing, backend=backend, output_dir=output,
            on_bad_row=on_bad_row, export=export, register_name=register,
        )
        if max_steps_override:
            cfg = cfg.model_copy(update=max_steps_override)
        run_train(cfg, resume=resume)
        if cfg.export:
            from training.export import export_run

            export_run(cfg.resolved_output_dir, cfg.quantization, cfg.register_name, cfg.description)
        elif cfg.register_name:
            console.print("[yellow]--register needs an export; run `lorabot export --register NAME` later[/yellow]")
    except TrainingError as error:
        raise _fail(error) from None


def export(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by `lorabot train`.")],
    quantization: Annotated[str, typer.Option(help="q4_k_m, q5_k_m, q8_0 or none (f16 only).")] = "q4_k_m",
    register: Annotated[Optional[str], typer.Option(help="Add the result to the models registry as NAME.")] = None,
    description: Annotated[str, typer.Option(help="Shown next to the model in /model.")] = "",
) -> None:
    """Merge a run's LoRA adapter into its base, convert to GGUF and quantize (offline)."""
    from training.export import export_run

    try:
        export_run(run_dir, None if quantization == "none" else quantization, register, description)
    except TrainingError as error:
        raise _fail(error) from None


def bench_train(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    cases: Annotated[str, typer.Option(help="Comma list of a (Unsloth, notebook), b (hf), c (lorabot tuned).")] = "a,b,c",
    steps: Annotated[int, typer.Option(help="Optimizer steps per case (the first 3 are warm-up).")] = 12,
    conversations: Annotated[int, typer.Option(help="Synthetic conversations in the pool.")] = 2000,
    shape: Annotated[str, typer.Option(help="Random-weight model shape.")] = "llama-3.2-1b",
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
) -> None:
    """GPU: tokens/s, MFU and peak memory of Unsloth vs plain HF vs lorabot's tuned preset."""
    from bench.train import main as bench_main

    try:
        bench_main(json_output=json_output, cases=cases.split(","), steps=steps,
                   conversations=conversations, shape=shape, lora_r=lora_r)
    except TrainingError as error:
        raise _fail(error) from None


def app():
    """A stand-alone app (`python -m training.cli ...`) for hosts without the bot extras."""
    standalone = typer.Typer(no_args_is_help=True, add_completion=False)
    standalone.command("train")(train)
    standalone.command("export")(export)
    standalone.command("bench-train")(bench_train)
    return standalone


if __name__ == "__main__":
    app()()
