"""`lorabot personas`: list, add and remove personas (a named system prompt, optionally with a
model and a temperature), kept in the models file next to the models (docs/personas.md)."""

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

app = typer.Typer(help="List, add and remove personas (/persona in the chats).", invoke_without_command=True)


def _registry() -> ModelRegistry:
    return ModelRegistry(settings().resolved_models_file)


def _list() -> None:
    registry = _registry()
    table = Table(title=f"Personas ({registry.path})")
    for column in ("name", "system prompt", "model", "temperature"):
        table.add_column(column)
    for persona in registry.personas():
        model = persona.model or ""
        if persona.model and persona.model not in registry:
            model = f"{persona.model} [red](not registered)[/red]"
        prompt = (
            persona.system_prompt if len(persona.system_prompt) <= 80 else persona.system_prompt[:79] + "…"
        )
        temperature = "" if persona.temperature is None else f"{persona.temperature:g}"
        table.add_row(persona.name, escape(prompt), model, temperature)
    console.print(table)
    if problem := registry.problem:
        note = "Error in the models file (running bots keep its last good version)"
        console.print(f"[red]{note}: {escape(problem)}[/red]")
        raise typer.Exit(1)


@app.callback()
def personas(ctx: typer.Context) -> None:
    """List the personas (name, system prompt, model, temperature)."""
    if ctx.invoked_subcommand is None:
        _list()


@app.command("list")
def personas_list() -> None:
    """List the personas (name, system prompt, model, temperature)."""
    _list()


@app.command("add")
def personas_add(
    name: str,
    prompt: Annotated[str | None, typer.Option("--prompt", help="The persona's system prompt.")] = None,
    prompt_file: Annotated[
        Path | None, typer.Option("--prompt-file", help="Read the system prompt from this file instead.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="A registered model the persona answers with (default: the chat's).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature, 0–2.")] = None,
    description: Annotated[str, typer.Option(help="One line shown in /persona's list.")] = "",
) -> None:
    """Add (or replace) persona NAME; running bots see it at once."""
    if (prompt is None) == (prompt_file is None):
        console.print(
            "[red]give the system prompt with --prompt TEXT or --prompt-file FILE (one of them)[/red]"
        )
        raise typer.Exit(2)
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            console.print(f"[red]cannot read {escape(str(prompt_file))}: {escape(str(error))}[/red]")
            raise typer.Exit(2) from None
    assert prompt is not None
    try:
        _registry().add_persona(name, prompt, model=model, temperature=temperature, description=description)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        console.print(f"[red]{escape(problems)}[/red]")
        raise typer.Exit(2) from None
    except RegistryError as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Added persona {name}" + (f" (model {model})" if model else ""))


@app.command("remove")
def personas_remove(name: str) -> None:
    """Remove persona NAME (conversations that chose it go back to their default prompt)."""
    try:
        _registry().remove_persona(name)
    except ChatError as error:
        console.print(f"[red]{escape(error.user_message)}[/red]")
        raise typer.Exit(2) from None
    except RegistryError as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Removed persona {name}")
