"""`lorabot bench …`: benchmarks that print a table (or --json) with ratios against a baseline
measured in the same run (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

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


@app.command("loop")
def bench_loop(
    rater: Annotated[
        str,
        typer.Option(
            help="brief, listy (bench/raters.py) or FILE.py:FUNCTION (question, answer) → up/down/again."
        ),
    ] = "brief",
    ratings: Annotated[
        int, typer.Option(min=2, help="Ratings given through the platform for training.")
    ] = 500,
    ab_ratings: Annotated[int, typer.Option(min=1, help="A/B: ratings per arm on held-out questions.")] = 120,
    max_tokens: Annotated[int, typer.Option(min=1, help="The bot's most tokens per answer.")] = 64,
    users: Annotated[int, typer.Option(min=1, max=64, help="Users asking at once.")] = 8,
    steps: Annotated[int, typer.Option(min=1, help="KTO training steps.")] = 30,
    learning_rate: Annotated[float, typer.Option(min=0, help="KTO learning rate (LoRA).")] = 3e-4,
    dpo_min_pairs: Annotated[
        int, typer.Option(min=0, help="DPO after KTO when the 🔁 pairs number at least this (0: never).")
    ] = 16,
    workdir: Annotated[
        Path | None, typer.Option(help="Where the run folder goes (default: the temp dir).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The learning loop on the embedded model: ratings through the bot, KTO (+DPO), live A/B."""
    from bench.loop import LoopError, LoopOptions
    from bench.loop import main as loop_main
    from bench.raters import RaterError
    from training.errors import TrainingError
    from training.evaluate.errors import EvalError

    options = LoopOptions(
        rater=rater, ratings=ratings, ab_ratings=ab_ratings, max_tokens=max_tokens, users=users,
        steps=steps, learning_rate=learning_rate, dpo_min_pairs=dpo_min_pairs, workdir=workdir,
    )  # fmt: skip
    try:
        loop_main(options, json_output=json_output)
    except (RaterError, LoopError, TrainingError, EvalError) as error:
        console.print(f"[red]bench loop: {escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    except ImportError as error:  # training's libraries (the `train` extra)
        console.print(
            f"[red]`lorabot bench loop` needs the `train` extra ({error.name or error} is missing): "
            "pip install -e '.[train]' (or `make setup-dev`).[/red]"
        )
        raise typer.Exit(2) from None


try:
    from bench.train import bench_train
except ImportError as error:
    app.command("train", context_settings=LOOSE)(missing_extra("bench train", "train", error))
else:
    app.command("train")(bench_train)
