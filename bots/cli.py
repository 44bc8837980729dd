"""The `lorabot` command line (Typer). Commands are thin: they build settings and a
ChatService and hand over to an adapter, the trainer, or a benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bots.platforms import PLATFORMS
from core.errors import ChatError
from core.logs import configure_logging
from core.registry import ModelRegistry, RegistryError
from core.service import ChatService
from core.settings import CoreSettings, SettingsError, load_core_settings

app = typer.Typer(help="lorabot: chat with your own fine-tuned GGUF models on Discord, Telegram or a terminal.", no_args_is_help=True)
models_app = typer.Typer(help="List and register models.", invoke_without_command=True)
bench_app = typer.Typer(help="Benchmarks (print a table; --json for one JSON object).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")
console = Console()
log = logging.getLogger("lorabot")


def _settings(**overrides: object) -> CoreSettings:
    try:
        return load_core_settings(**overrides)
    except SettingsError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


async def _with_service(settings: CoreSettings, body: Callable[[ChatService], Awaitable[None]]) -> None:
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


def _run_until_signal(main: Awaitable[None]) -> None:
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


@app.command()
def chat(
    model: Annotated[Optional[str], typer.Option(help="Registered model to chat with.")] = None,
    once: Annotated[Optional[str], typer.Option(help="Answer this one message and exit.")] = None,
) -> None:
    """Chat in the terminal (streams tokens; /model, /models, /reset, /help inside)."""
    from bots.console import ConsoleChat

    settings = _settings()
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

    _run_until_signal(_with_service(settings, body))
    if failed:
        raise typer.Exit(1)


@models_app.callback()
def models(ctx: typer.Context) -> None:
    """List the registered models (name, file, size, context length, default)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings()
    registry = ModelRegistry(settings.resolved_models_file)
    table = Table(title=f"Models ({settings.resolved_models_file})")
    for column in ("name", "file", "size", "context", "default", "description"):
        table.add_column(column)
    for entry in registry.all():  # a broken file still lists the embedded model
        size = entry.size_bytes
        table.add_row(
            entry.name,
            str(entry.path),
            f"{size / 2**20:.1f} MiB" if size is not None else "[red]missing[/red]",
            str(entry.context_length or settings.context_length),
            "yes" if entry.name == settings.default_model else "",
            entry.description,
        )
    console.print(table)
    if problem := registry.problem:  # escape: the text holds [models.NAME], not markup
        note = "Error in the models file (running bots keep its last good version)"
        console.print(f"[red]{note}: {escape(problem)}[/red]")
        raise typer.Exit(1)


@models_app.command("add")
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
    registry = ModelRegistry(_settings().resolved_models_file)
    try:
        registry.add(name, path, context_length=context_length, description=description)
    except (RegistryError, ValueError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Registered {name} → {path}")


@models_app.command("remove")
def models_remove(name: str) -> None:
    """Unregister NAME (the file stays on disk)."""
    registry = ModelRegistry(_settings().resolved_models_file)
    try:
        registry.remove(name)
    except ChatError as error:
        console.print(f"[red]{error.user_message}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Removed {name}")


@app.command()
def run() -> None:
    """Start what is configured: Discord and/or Telegram bots, or the terminal chat."""
    from bots.platforms import configured_platforms

    settings = _settings()
    try:
        runners = configured_platforms()
    except RuntimeError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    if not runners:
        console.print("No DISCORD_TOKEN or TELEGRAM_TOKEN configured: starting the terminal chat.")
        chat(model=None, once=None)
        return

    configure_logging(settings.log_level)
    names = [name for name, _ in runners]

    async def body(service: ChatService) -> None:
        _log_start(names, service)
        await asyncio.gather(*(runner(service) for _, runner in runners))

    _run_until_signal(_with_service(settings, body))


def _log_start(platforms: list[str], service: ChatService) -> None:
    """The start-up line an operator looks for: what runs, on which models, with which limits."""
    settings = service.settings
    log.info(
        "lorabot starting: platforms=%s default_model=%s models=%s parallel=%d threads=%d "
        "max_wait=%.0fs queue_max=%d context=%d data=%s",
        ",".join(platforms),
        settings.default_model,
        ",".join(service.model_names()),
        settings.parallel,
        settings.resolved_threads,
        settings.max_wait_s,
        settings.queue_max,
        settings.context_length,
        settings.data_dir,
    )


def _platform_command(name: str, variable: str) -> None:
    """`lorabot <platform>`: one command per entry of `bots.platforms.PLATFORMS`."""

    def start() -> None:
        _run_platform(name)

    start.__doc__ = f"Start only the {name.capitalize()} bot (needs {variable})."
    app.command(name)(start)


for _name, (_variable, *_) in PLATFORMS.items():
    _platform_command(_name, _variable)


def _run_platform(name: str) -> None:
    from bots.platforms import platform_runner

    settings = _settings()
    try:
        runner = platform_runner(name)
    except RuntimeError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)

    async def body(service: ChatService) -> None:
        _log_start([name], service)
        await runner(service)

    _run_until_signal(_with_service(settings, body))


@bench_app.command("engine")
def bench_engine(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    turns: int = 10,
    conversations: int = 8,
    max_tokens: int = 48,
) -> None:
    """Core vs raw llama-cpp-python on the embedded model: throughput, TTFT, concurrency."""
    from bench.engine import main as bench_main

    bench_main(_settings(), json_output=json_output, turns=turns, conversations=conversations, max_tokens=max_tokens)


@bench_app.command("load")
def bench_load(
    platform: Annotated[str, typer.Option(help="telegram or discord.")] = "telegram",
    users: Annotated[int, typer.Option(min=1, help="Users in private chats / own channels.")] = 100,
    messages: Annotated[int, typer.Option(min=1, help="Questions per user, one answer at a time.")] = 3,
    groups: Annotated[int, typer.Option(min=0, help="Telegram: extra groups (members mention).")] = 5,
    group_users: Annotated[int, typer.Option(min=1, help="Telegram: members asking per group.")] = 2,
    dms: Annotated[int, typer.Option(min=0, help="Discord: extra users writing in DMs.")] = 10,
    timeout_s: Annotated[float, typer.Option(min=1, help="Stop the users after this long.")] = 900.0,
    think_s: Annotated[float, typer.Option(min=0, help="Mean pause before the next question.")] = 2.0,
    ramp_s: Annotated[float, typer.Option(min=0, help="Users start spread over this long.")] = 10.0,
    engine: Annotated[bool, typer.Option(help="Also time the engine alone (delivery_vs_engine).")] = True,
    engine_s: Annotated[float, typer.Option(min=1, help="At most this long for the engine alone.")] = 300.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The real bot process against a fake Telegram/Discord (rate limits on), N users at once."""
    from bench.load import main as load_main

    if platform not in ("telegram", "discord"):
        console.print(f"[red]--platform must be telegram or discord, not {platform!r}[/red]")
        raise typer.Exit(2)
    load_main(
        platform, json_output=json_output, users=users, messages=messages, groups=groups,
        group_users=group_users, dms=dms, timeout_s=timeout_s, think_s=think_s, ramp_s=ramp_s,
        engine=engine, engine_s=engine_s,
    )  # fmt: skip


def _missing_extra(name: str, extra: str, error: ImportError) -> Callable[..., None]:
    """A stand-in for a command whose extra is not installed: it says which one to install."""

    def command(ctx: typer.Context) -> None:
        console.print(
            f"[red]`lorabot {name}` needs the `{extra}` extra ({error.name or error} is missing): "
            f"pip install -e '.[{extra}]' (or `make setup-dev`).[/red]"
        )
        raise typer.Exit(2)

    command.__doc__ = f"(not installed: needs the `{extra}` extra)"
    return command


_LOOSE = {"allow_extra_args": True, "ignore_unknown_options": True}


def _mount_optional() -> None:
    """Commands from the training/eval side. Without their extra they still appear and say
    which extra to install, instead of vanishing from `--help`."""
    try:
        from training import cli as training_cli
    except ImportError as error:
        app.command("train", context_settings=_LOOSE)(_missing_extra("train", "train", error))
        app.command("export", context_settings=_LOOSE)(_missing_extra("export", "train", error))
    else:
        app.command("train")(training_cli.train)
        app.command("export")(training_cli.export)
    try:
        from training.evaluate.cli import eval as eval_command
    except ImportError as error:
        app.command("eval", context_settings=_LOOSE)(_missing_extra("eval", "eval", error))
    else:
        app.command("eval")(eval_command)
    try:
        from bench.train import bench_train
    except ImportError as error:
        bench_app.command("train", context_settings=_LOOSE)(_missing_extra("bench train", "train", error))
    else:
        bench_app.command("train")(bench_train)


_mount_optional()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
