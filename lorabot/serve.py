"""Serving commands: `lorabot chat`, `lorabot run` and one `lorabot <platform>` per entry of
`bots.platforms.PLATFORMS`. They build settings and a ChatService and hand over to an adapter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import typer

from bots.platforms import PLATFORMS, Runner, configured_platforms, platform_runner
from core.errors import ChatError
from core.logs import configure_logging
from core.ops_server import OpsServer
from core.service import ChatService
from core.settings import SettingsError
from lorabot.common import console, run_until_signal, settings, with_service

log = logging.getLogger("lorabot")


def chat(
    model: Annotated[str | None, typer.Option(help="Registered model to chat with.")] = None,
    once: Annotated[str | None, typer.Option(help="Answer this one message and exit.")] = None,
) -> None:
    """Chat in the terminal (streams tokens; /model, /models, /reset, /help inside)."""
    from bots.console import ConsoleChat

    failed = False

    async def body(service: ChatService) -> None:
        nonlocal failed
        chat = ConsoleChat(service)
        if model:
            try:
                await service.set_model(chat.conversation_id, model)
            except ChatError as error:
                console.print(f"[red]{error.user_message}[/red]")
                failed = True
                return
        if once is not None:
            reply = await chat.ask(once)
            failed = not reply
        else:
            await chat.loop()

    run_until_signal(with_service(settings(), body))
    if failed:
        raise typer.Exit(1)


def run() -> None:
    """Start what is configured: every platform whose token is set, or the terminal chat."""
    current = settings()
    try:
        runners = configured_platforms()
    except RuntimeError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    if not runners:
        tokens = " or ".join(variable for variable, *_ in PLATFORMS.values())
        console.print(f"No {tokens} configured: starting the terminal chat.")
        chat(model=None, once=None)
        return
    _serve(current.log_level, runners)


def _serve(log_level: str, runners: list[tuple[str, Runner]]) -> None:
    configure_logging(log_level)

    async def body(service: ChatService) -> None:
        _log_start([name for name, _ in runners], service)
        async with ops_server(service):
            await asyncio.gather(*(runner(service) for _, runner in runners))

    run_until_signal(with_service(settings(), body))


@contextlib.asynccontextmanager
async def ops_server(service: ChatService) -> AsyncIterator[OpsServer | None]:
    """/metrics, /healthz and /readyz on LORABOT_METRICS_PORT while the bots run (unset: nothing)."""
    current = service.settings
    if current.metrics_port is None:
        yield None
        return
    server = OpsServer(service, host=current.metrics_host, port=current.metrics_port)
    try:
        await server.start()
    except OSError as error:
        raise SettingsError(
            f"LORABOT_METRICS_PORT: cannot listen on {current.metrics_host}:{current.metrics_port} "
            f"({error.strerror or error})"
        ) from None
    try:
        yield server
    finally:
        await server.close()


def _log_start(platforms: list[str], service: ChatService) -> None:
    """The start-up line an operator looks for: what runs, on which models, with which limits."""
    current = service.settings
    log.info(
        "lorabot starting: platforms=%s default_model=%s models=%s parallel=%d threads=%d "
        "max_wait=%.0fs queue_max=%d context=%d data=%s",
        ",".join(platforms),
        current.default_model,
        ",".join(service.model_names()),
        current.parallel,
        current.resolved_threads,
        current.max_wait_s,
        current.queue_max,
        current.context_length,
        current.data_dir,
    )


def platform_command(name: str, variable: str) -> Callable[[], None]:
    """`lorabot <name>`: start only that platform."""

    def start() -> None:
        current = settings()
        try:
            runner = platform_runner(name)
        except RuntimeError as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(2) from None
        _serve(current.log_level, [(name, runner)])

    start.__doc__ = f"Start only the {name.capitalize()} bot (needs {variable})."
    return start


def mount(app: typer.Typer) -> None:
    app.command()(chat)
    app.command()(run)
    for name, (variable, *_) in PLATFORMS.items():
        app.command(name)(platform_command(name, variable))
