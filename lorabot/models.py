"""`lorabot models`: list, register, pull from the Hub and unregister models (the registry lives in core)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from core.errors import ChatError
from core.registry import ModelRegistry, RegistryError
from lorabot.common import console, settings

app = typer.Typer(help="List and register models.", invoke_without_command=True)


@app.callback()
def models(ctx: typer.Context) -> None:
    """List the registered models (name, file or endpoint URLs, size, context length, default)."""
    if ctx.invoked_subcommand is not None:
        return
    current = settings()
    registry = ModelRegistry(current.resolved_models_file)
    table = Table(title=f"Models ({current.resolved_models_file})")
    for column in ("name", "file or endpoints", "size", "context", "default", "description"):
        table.add_column(column)
    for entry in registry.all():  # a broken file still lists the embedded model
        size = entry.size_bytes
        if entry.is_remote:  # the URLs and the key's variable name, never a key
            where = "\n".join(entry.urls) + (f"\nmodel {entry.remote_model}" if entry.remote_model else "")
            where += f"\nkey from ${entry.api_key_env}" if entry.api_key_env else ""
        else:
            where = str(entry.path)
        table.add_row(
            entry.name,
            escape(where),
            "remote"
            if entry.is_remote
            else f"{size / 2**20:.1f} MiB"
            if size is not None
            else "[red]missing[/red]",
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
    path: Annotated[Path | None, typer.Argument(help="A GGUF file (or give --url instead).")] = None,
    url: Annotated[
        list[str] | None,
        typer.Option(
            "--url", help="OpenAI-compatible endpoint (…/v1) serving the model; repeat for several."
        ),
    ] = None,
    remote_model: Annotated[
        str | None, typer.Option(help="Model name the endpoints serve (default: the first they list).")
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Environment variable holding the endpoints' API key (the key is never stored)."),
    ] = None,
    context_length: Annotated[int | None, typer.Option(help="Context window (tokens).")] = None,
    description: str = "",
) -> None:
    """Register a GGUF file, or OpenAI-compatible endpoints (--url), under NAME (running bots see it
    without a restart)."""
    urls = url or []
    if (path is None) == (not urls):
        console.print("[red]give a GGUF PATH or one or more --url, not both[/red]")
        raise typer.Exit(2)
    if path is not None and not path.is_file():
        console.print(f"[red]{path} does not exist[/red]")
        raise typer.Exit(2)
    registry = ModelRegistry(settings().resolved_models_file)
    try:
        entry = registry.add(
            name, path, urls=urls, remote_model=remote_model, api_key_env=api_key_env,
            context_length=context_length, description=description,
        )  # fmt: skip
    except ValidationError as error:  # one line per problem, as the user wrote the option
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        console.print(f"[red]{escape(problems)}[/red]")
        raise typer.Exit(2) from None
    except (RegistryError, ValueError) as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Registered {name} → {path if path is not None else ', '.join(entry.urls)}")


@app.command("pull")
def models_pull(
    repo: Annotated[
        str, typer.Argument(help="Hub repo of GGUF files, e.g. bartowski/Llama-3.2-1B-Instruct-GGUF.")
    ],
    file: Annotated[
        str | None, typer.Option("--file", help="Which GGUF: a pattern such as '*q4_k_m.gguf'.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Registry name (default: the file name without .gguf).")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit (default main).")] = None,
    context_length: Annotated[int | None, typer.Option(help="Context window (tokens).")] = None,
) -> None:
    """Download a GGUF from the Hugging Face Hub (resumed, sha256-checked) and register it.

    Files go to DATA_DIR/models/OWNER--REPO/. HF_TOKEN for private or gated repos, HF_ENDPOINT
    for a mirror."""
    import re

    from core.registry import MODEL_NAME_PATTERN
    from training.errors import HubError
    from training.hub import default_model_name, pull_gguf

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
    except (HubError, RegistryError, ValueError) as error:
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
    except RegistryError as error:  # e.g. a read-only models file: say so, no traceback
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Removed {name}")
    if users := registry.personas_using(name):  # kept: they work again once NAME is registered again
        console.print(
            f"[yellow]persona(s) {', '.join(users)} name {name}: their conversations answer with their "
            "default model until it is registered again (or `lorabot personas add` changes them)[/yellow]"
        )


# `promote` (the gate) and `ab` (live A/B) live in modules of their own.
from lorabot import ab, promote  # noqa: E402

promote.mount(app)
ab.mount(app)
