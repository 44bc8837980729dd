"""`lorabot bench …`: benchmarks that print a table (or --json) with ratios against a baseline
measured in the same run (docs/benchmarks.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from lorabot.common import LOOSE, console, missing_extra, settings

app = typer.Typer(help="Benchmarks (print a table; --json for one JSON object).", no_args_is_help=True)


@app.command("engine")
def bench_engine(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    turns: int = 10,
    conversations: int = 8,
    max_tokens: int = 48,
    model: Annotated[
        str | None,
        typer.Option(
            help="Registered model (default LORABOT_DEFAULT_MODEL); "
            "a remote one is measured through lorabot only."
        ),
    ] = None,
) -> None:
    """Core vs raw llama-cpp-python (and llama-server, when built) on the embedded model."""
    from bench.engine import main as bench_main

    bench_main(
        settings(),
        json_output=json_output,
        turns=turns,
        conversations=conversations,
        max_tokens=max_tokens,
        model=model,
    )


@app.command("load")
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
    rate: Annotated[
        bool,
        typer.Option(help="Users rate every final answer (👍/👎 buttons or reactions), 1 in 10 press 🔁."),
    ] = True,
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
        engine=engine, engine_s=engine_s, rate=rate,
    )  # fmt: skip


try:
    from bench.train import bench_train
except ImportError as error:
    app.command("train", context_settings=LOOSE)(missing_extra("bench train", "train", error))
else:
    app.command("train")(bench_train)
