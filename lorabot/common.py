"""What every command shares: the console, settings with a clear error, a started ChatService,
and running until Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

import typer
from rich.console import Console

from core.errors import ChatError
from core.registry import RegistryError
from core.service import ChatService
from core.settings import CoreSettings, SettingsError, load_core_settings

console = Console()


def settings(**overrides: object) -> CoreSettings:
    """The core settings, or exit 2 with the message naming the bad setting."""
    try:
        return load_core_settings(**overrides)
    except SettingsError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


async def with_service(settings: CoreSettings, body: Callable[[ChatService], Awaitable[None]]) -> None:
    """Start a ChatService, run `body` with it, always close it; user-facing errors exit 2."""
    service = ChatService(settings)
    try:
        await service.start()
    except (ChatError, RegistryError) as error:
        console.print(f"[red]{getattr(error, 'user_message', error)}[/red]")
        raise typer.Exit(2) from None
    try:
        await body(service)
    except SettingsError as error:  # e.g. a platform rejected the configured token
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    finally:
        await service.close()


def run_until_signal(main: Awaitable[None]) -> None:
    """Run `main`; Ctrl-C or SIGTERM cancels it so adapters shut down cleanly."""

    async def runner() -> None:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())


LOOSE = {"allow_extra_args": True, "ignore_unknown_options": True}  # a stand-in takes any arguments


def missing_extra(name: str, extra: str, error: ImportError) -> Callable[..., None]:
    """A stand-in for a command whose extra is not installed: it says which one to install."""

    def command(ctx: typer.Context) -> None:
        console.print(
            f"[red]`lorabot {name}` needs the `{extra}` extra ({error.name or error} is missing): "
            f"pip install -e '.[{extra}]' (or `make setup-dev`).[/red]"
        )
        raise typer.Exit(2)

    command.__doc__ = f"(not installed: needs the `{extra}` extra)"
    return command
