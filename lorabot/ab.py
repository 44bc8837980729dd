"""`lorabot models ab`: live A/B of a candidate against a served model (core/ab.py).

    lorabot models ab NAME CANDIDATE --share 0.2   start (or change the running test's share)
    lorabot models ab                              the running (or last) test and its arms compared
    lorabot models ab --stop [--promote]           stop; --promote then runs the promotion gate

The test lives in the history database (LORABOT_DATABASE_URL, else DATA_DIR's SQLite file), so
every bot process on it routes the same conversations the same way and sees a start or a stop
within about a second, without a restart.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from core import ab as ab_store
from core.feedback_report import AB_MIN_RATINGS, AbComparison, ab_comparison
from core.history import ConversationStore
from core.registry import ModelRegistry
from lorabot.common import console, settings
from lorabot.feedback import MinRatings, print_ab, with_store


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{escape(message)}[/red]")
    return typer.Exit(2)


def ab(
    name: Annotated[
        str | None, typer.Argument(help="The served model whose conversations are split (e.g. the default).")
    ] = None,
    candidate: Annotated[
        str | None, typer.Argument(help="The registered model a share of them gets.")
    ] = None,
    share: Annotated[
        float | None,
        typer.Option(help="Share of NAME's conversations sent to CANDIDATE, between 0 and 1 (e.g. 0.2)."),
    ] = None,
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop the running test (its figures are kept).")
    ] = False,
    promote: Annotated[
        bool,
        typer.Option("--promote", help="With --stop: promote CANDIDATE to NAME through the promotion gate."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --promote: promote even if the gate fails (logged).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the test and its comparison as JSON.")
    ] = False,
    min_ratings: MinRatings = AB_MIN_RATINGS,
) -> None:
    """Send a share of NAME's conversations to CANDIDATE (sticky per conversation, agreed by every
    bot process through the database) until stopped; a conversation's own /model choice wins."""
    if (promote or force) and not stop:
        raise _fail("--promote and --force go with --stop")
    if stop:
        if name is not None or share is not None:
            raise _fail("--stop takes no NAME, CANDIDATE or --share")
        _stop(promote=promote, force=force, as_json=as_json)
    elif name is not None:
        if candidate is None:
            raise _fail("give NAME and CANDIDATE (lorabot models ab NAME CANDIDATE --share 0.2)")
        if share is None:
            raise _fail("give --share: the part of NAME's conversations CANDIDATE gets (e.g. --share 0.2)")
        _start(name, candidate, share, as_json=as_json)
    else:
        if share is not None:
            raise _fail("--share needs NAME and CANDIDATE (lorabot models ab NAME CANDIDATE --share 0.2)")
        _show(min_ratings, as_json=as_json)


def _start(name: str, candidate: str, share: float, *, as_json: bool) -> None:
    current = settings()
    registry = ModelRegistry(current.resolved_models_file)
    for model in (name, candidate):
        if model not in registry:
            raise _fail(f"{model} is not a registered model (registered: {', '.join(registry.names())})")
    try:
        ab_store.check_share(share)
    except ab_store.AbError as error:
        raise _fail(error.user_message) from None

    async def work(store: ConversationStore) -> tuple[ab_store.AbTest, bool]:
        return await ab_store.start(store, name, candidate, share)

    test, new = with_store(current.resolved_database_url, work)  # an AbError exits 2 with its text
    if as_json:
        typer.echo(json.dumps({"test": test.as_dict(), "started": new}, indent=2))
        return
    what = "Started" if new else "Changed"
    console.print(
        f"{what} the A/B test: {escape(candidate)} answers {share:.0%} of the conversations served by "
        f"{escape(name)} (sticky per conversation; a conversation's own /model choice wins)."
        + ("" if new else " Conversations already routed keep their arm.")
    )
    if name != current.default_model:
        console.print(
            f"Note: the global default is {escape(current.default_model)}; only conversations whose "
            f"scope default is {escape(name)} are split."
        )


def _show(min_ratings: int, *, as_json: bool) -> None:
    current = settings()

    async def work(store: ConversationStore) -> AbComparison | None:
        return await ab_comparison(store, min_ratings=min_ratings)

    comparison = with_store(current.resolved_database_url, work)
    if as_json:
        typer.echo(json.dumps(comparison and comparison.as_dict(), indent=2, ensure_ascii=False))
        return
    if comparison is None:
        console.print("No A/B test has run. Start one: lorabot models ab NAME CANDIDATE --share 0.2")
        return
    print_ab(comparison)


def _stop(*, promote: bool, force: bool, as_json: bool) -> None:
    current = settings()
    stopped = with_store(current.resolved_database_url, ab_store.stop)
    if stopped is None:
        raise _fail("No A/B test is running.")
    if as_json:
        typer.echo(json.dumps({"test": stopped.as_dict()}, indent=2))
    else:
        console.print(
            f"Stopped the A/B test of {escape(stopped.candidate)} against {escape(stopped.name)}: "
            f"every conversation is served by {escape(stopped.name)} again (its figures: lorabot models ab)."
        )
    if promote:
        from lorabot.promote import promote_with_gate

        promote_with_gate(stopped.candidate, stopped.name, force=force)  # exits 2 when the gate refuses


def mount(app: typer.Typer) -> None:
    """Register the `ab` command on `lorabot models`."""
    app.command("ab")(ab)
