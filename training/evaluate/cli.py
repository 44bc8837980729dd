"""`lorabot eval`: a Typer-annotated function that lorabot/cli.py mounts as a command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def eval(  # noqa: A001 - the command is called `eval`
    models: Annotated[
        str, typer.Option(help="Comma-separated registered model names; the first is the baseline.")
    ],
    heldout: Annotated[
        Path | None,
        typer.Option(help="Held-out ShareGPT file (default: the tiny preset's held-out split)."),
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="Prompt set, one per line or .jsonl (default: the shipped set).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for report.md, report.json and tradeoff.png.")] = Path(
        "out/eval"
    ),
    max_tokens: Annotated[int, typer.Option(min=1, help="New tokens per answer at most (greedy).")] = 160,
    heldout_limit: Annotated[
        int | None, typer.Option(min=1, help="Score only the first N held-out conversations.")
    ] = None,
    judge: Annotated[
        str | None, typer.Option(help="Registered model that judges the answers pairwise.")
    ] = None,
    judge_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible base URL (…/v1) of a judge; key from LORABOT_JUDGE_API_KEY."),
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="Model name to ask at --judge-url.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
) -> None:
    """Compare registered models on this CPU: speed, memory, held-out perplexity, answers, optional judge."""
    from core.settings import SettingsError, load_core_settings
    from training.evaluate.errors import EvalError
    from training.evaluate.runner import EvalOptions, run_eval

    try:
        settings = load_core_settings()
        options = EvalOptions(
            models=models.split(","),
            out_dir=out,
            heldout=heldout,
            prompts=prompts,
            max_new_tokens=max_tokens,
            heldout_limit=heldout_limit,
            judge=judge,
            judge_url=judge_url,
            judge_model=judge_model,
            judge_api_key=os.environ.get("LORABOT_JUDGE_API_KEY"),
            progress=progress,
        )
        report = run_eval(settings, options)
    except (EvalError, SettingsError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    for line in report["tradeoff"]:
        console.print(line.replace("**", ""))
    console.print(f"[green]wrote[/green] {out / 'report.md'}, {out / 'report.json'}, {out / 'tradeoff.png'}")
