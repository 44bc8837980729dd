"""`lorabot models`: list, register, pull from the Hub and unregister models (the registry lives in core)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from core.errors import ChatError
from core.registry import ModelRegistry, RegistryError
from lorabot.common import console, settings

app = typer.Typer(help="List and register models.", invoke_without_command=True)


@app.callback()
def models(ctx: typer.Context) -> None:
    """List the registered models (name, file, size, context length, default)."""
    if ctx.invoked_subcommand is not None:
        return
    current = settings()
    registry = ModelRegistry(current.resolved_models_file)
    table = Table(title=f"Models ({current.resolved_models_file})")
    for column in ("name", "file", "size", "context", "default", "description"):
        table.add_column(column)
    for entry in registry.all():  # a broken file still lists the embedded model
        size = entry.size_bytes
        table.add_row(
            entry.name,
            str(entry.path),
            f"{size / 2**20:.1f} MiB" if size is not None else "[red]missing[/red]",
            str(entry.context_length or current.context_length),
            "yes" if entry.name == current.default_model else "",
            entry.description,
        )
    console.print(table)
    if problem := registry.problem:  # escape: the text holds [models.NAME], not markup
        note = "Error in the models file (running bots keep its last good version)"
        console.print(f"[red]{note}: {escape(problem)}[/red]")
        raise typer.Exit(1)


@app.command("add")
def models_add(
    name: str,
    path: Path,
    context_length: Annotated[Optional[int], typer.Option(help="Context window (tokens).")] = None,
    description: str = "",
) -> None:
    """Register a GGUF file under NAME (running bots see it without a restart)."""
    if not path.is_file():
        console.print(f"[red]{path} does not exist[/red]")
        raise typer.Exit(2)
    registry = ModelRegistry(settings().resolved_models_file)
    try:
        registry.add(name, path, context_length=context_length, description=description)
    except (RegistryError, ValueError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Registered {name} → {path}")


@app.command("pull")
def models_pull(
    repo: Annotated[str, typer.Argument(help="Hub repo of GGUF files, e.g. bartowski/Llama-3.2-1B-Instruct-GGUF.")],
    file: Annotated[Optional[str], typer.Option("--file", help="Which GGUF: a pattern such as '*q4_k_m.gguf'.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Registry name (default: the file name without .gguf).")] = None,
    revision: Annotated[Optional[str], typer.Option(help="Branch, tag or commit (default main).")] = None,
    context_length: Annotated[Optional[int], typer.Option(help="Context window (tokens).")] = None,
) -> None:
    """Download a GGUF from the Hugging Face Hub (resumed, sha256-checked) and register it.

    Files go to DATA_DIR/models/OWNER--REPO/. HF_TOKEN for private or gated repos, HF_ENDPOINT for a mirror."""
    from training.errors import HubError
    from training.hub import default_model_name, pull_gguf

    import re

    from core.registry import MODEL_NAME_PATTERN

    if name is not None and not re.fullmatch(MODEL_NAME_PATTERN, name):  # before downloading, not after
        console.print(f"[red]bad --name {name!r}: letters, digits, '.', '_', '-' (up to 64)[/red]")
        raise typer.Exit(2)
    current = settings()
    dest = current.data_dir / "models" / repo.replace("/", "--")
    try:
        pulled = pull_gguf(repo, dest, pattern=file, revision=revision)
        model_name = name or default_model_name(pulled)
        ModelRegistry(current.resolved_models_file).add(
            model_name, pulled.path, context_length=context_length, description=f"{repo} ({pulled.path.name})"
        )
    except HubError as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    except (RegistryError, ValueError) as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Registered {model_name} → {pulled.path} ({repo}@{pulled.commit[:12]})")


@app.command("remove")
def models_remove(name: str) -> None:
    """Unregister NAME (the file stays on disk)."""
    registry = ModelRegistry(settings().resolved_models_file)
    try:
        registry.remove(name)
    except ChatError as error:
        console.print(f"[red]{error.user_message}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Removed {name}")
