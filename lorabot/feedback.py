"""`lorabot feedback`: the chats' ratings as training data (export) and per model file (report),
with the live A/B's arms compared (core.feedback_report.ab_comparison).

Both read the history database the bots write (LORABOT_DATABASE_URL, else DATA_DIR's SQLite file);
the rows come from core/feedback_export.py and core/feedback_report.py (which /stats shares).
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from core.errors import ChatError
from core.feedback_export import ExportOptions, ExportSummary, export_feedback, write_jsonl
from core.feedback_report import AB_MIN_RATINGS, AbComparison, ModelRating, ab_comparison, model_report
from core.history import ConversationStore
from lorabot.common import console, settings

app = typer.Typer(help="Export the chats' 👍/👎 and 🔁 as training data; report how each model is rated.")
T = TypeVar("T")


class Format(enum.StrEnum):
    kto = "kto"
    dpo = "dpo"
    sft = "sft"


def parse_since(value: str | None) -> float | None:
    """An ISO date or date-time (UTC unless it names an offset) → epoch seconds."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        hint = "an ISO date such as 2025-01-31 (or 2025-01-31T12:00)"
        raise typer.BadParameter(hint, param_hint="--since") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def with_store(url: str, work: Callable[[ConversationStore], Awaitable[T]]) -> T:
    """Open the history database, run `work`, close it; a store error exits 2 with its message."""

    async def run() -> T:
        store = await ConversationStore.open(url)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except ChatError as error:
        console.print(f"[red]{escape(error.user_message)}[/red]")
        raise typer.Exit(2) from None


@app.command("export")
def export(
    format: Annotated[Format, typer.Option("--format", help="kto, dpo or sft (trl's trainers read them).")],
    out: Annotated[Path, typer.Option("--out", help="The JSONL file to write.")],
    model: Annotated[
        str | None, typer.Option(help="Only answers this registered model wrote (the name at the time).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only ratings given and 🔁 made on or after this ISO date (UTC)."),
    ] = None,
) -> None:
    """Write the rated answers as JSONL for KTO, DPO or SFT training, with a summary.

    Conversations of people who said /feedback off are left out; mentions and platform ids are
    scrubbed (docs/privacy.md)."""
    current = settings()
    options = ExportOptions(
        format=format.value,
        system_prompt=current.system_prompt,
        history_turns=current.history_max_turns,
        model=model,
        since=parse_since(since),
    )
    rows, summary = with_store(current.resolved_database_url, lambda store: export_feedback(store, options))
    write_jsonl(rows, out)
    console.print(summary_table(summary, out))


def summary_table(summary: ExportSummary, out: Path) -> Table:
    """What went into the file and what was left out, and why."""
    table = Table(title=f"feedback export ({summary.format})", show_header=False)
    table.add_column("what")
    table.add_column("count")
    table.add_row("rows written", f"{summary.rows} → {escape(str(out))}")
    if summary.format == "kto":
        table.add_row("labels", f"{summary.desirable} true (👍), {summary.undesirable} false (👎)")
    if summary.format == "dpo":
        table.add_row("preference pairs", str(summary.rows))
        table.add_row(
            "conflicting pairs dropped",
            f"{summary.pairs_replaced_liked} where a replaced answer is 👍, "
            f"{summary.pairs_no_preference} where the answer that stayed is 👎 and none is 👍",
        )
    else:
        table.add_row(
            "answers rated both 👍 and 👎",
            f"{summary.conflicting_answers}: {summary.resolved_by_majority} by majority, "
            f"{summary.ties_dropped} ties dropped",
        )
    table.add_row("conflicts resolved by", summary.resolution)
    table.add_row("conversations left out (opted out)", str(summary.opted_out_conversations))
    table.add_row("skipped: another model", str(summary.skipped_model))
    table.add_row("skipped: before --since", str(summary.skipped_date))
    return table


MinRatings = Annotated[
    int,
    typer.Option(
        "--min-ratings", min=1, help="A/B: ratings each arm needs before a difference counts as decided."
    ),
]


@app.command("report")
def report(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ab_only: Annotated[
        bool, typer.Option("--ab", help="Only the A/B comparison (with --json: its object, or null).")
    ] = False,
    min_ratings: MinRatings = AB_MIN_RATINGS,
) -> None:
    """Per model file: ratings, 👍-rate with a 95% interval, and how often answers are regenerated;
    then the live A/B's two arms (the running test, else the last one), compared.

    The interval is Wilson's; the regenerate rate is the share of the turns the file answered where
    one of its answers was replaced by a 🔁. The A/B's p-value is a two-proportion z-test's."""
    current = settings()

    async def read(store: ConversationStore) -> tuple[list[ModelRating], AbComparison | None]:
        rows = [] if ab_only else await model_report(store)
        return rows, await ab_comparison(store, min_ratings=min_ratings)

    rows, comparison = with_store(current.resolved_database_url, read)
    if as_json:  # --json alone keeps its shape (a list of model files); --ab --json is the A/B object
        printed: object = (
            (comparison and comparison.as_dict()) if ab_only else [row.as_dict() for row in rows]
        )
        typer.echo(json.dumps(printed, indent=2, ensure_ascii=False))
        return
    if not ab_only:
        if rows:
            console.print(report_table(rows))
            console.print(
                "rated: answers with a rating; 👍 rate: of all ratings, with its Wilson 95% interval; "
                "🔁 rate: turns where an answer of this file was regenerated / turns it answered"
            )
        else:
            console.print("No answers with a recorded model yet: nothing to report.")
    if comparison is not None:
        print_ab(comparison)
    elif ab_only:
        console.print("No A/B test has run (lorabot models ab NAME CANDIDATE --share S starts one).")


def print_ab(comparison: AbComparison) -> None:
    """The two arms side by side, and the verdict with its reason."""
    test = comparison.test
    state = "running" if test.running else f"stopped {_when(test.stopped_at)}"
    table = Table(
        title=f"A/B: {test.candidate} against {test.name}, share {test.share:g} "
        f"(started {_when(test.started_at)}, {state})"
    )
    table.add_column("arm")
    table.add_column("model / file", no_wrap=True)
    for column in ("conversations", "👍", "👎", "👍 rate", "95% CI"):
        table.add_column(column, justify="right")
    for arm in (comparison.control, comparison.candidate):
        interval = arm.interval
        files = "\n".join(arm.model_files) or "no ratings yet"
        table.add_row(
            arm.arm,
            f"{escape(arm.model)}\n{escape(files)}",
            str(arm.conversations),
            str(arm.up),
            str(arm.down),
            _percent(arm.up_rate),
            f"{100 * interval[0]:.0f}–{_percent(interval[1])}" if interval else "–",
        )
    console.print(table)
    if comparison.p_value is not None and comparison.difference is not None:
        console.print(
            f"difference (candidate − control): {100 * comparison.difference:+.1f} points, "
            f"z = {comparison.z:.2f}, p = {comparison.p_value:.3g} (two-proportion z-test)"
        )
    colour = "green" if comparison.decided else "yellow"
    console.print(f"[{colour}]{escape(comparison.reason)}[/{colour}]")


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "–"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def report_table(rows: list[ModelRating]) -> Table:
    """One row per model file; the name and the file identity are never cut (a reader compares them)."""
    table = Table(title="feedback per model file")
    names = [(row.model, row.model_file or "file unknown") for row in rows]
    widest = max((len(part) for pair in names for part in pair), default=12)
    table.add_column("model / file", no_wrap=True, min_width=widest)
    for column in ("rated", "👍", "👎", "👍 rate", "95% CI", "🔁 rate"):
        table.add_column(column, justify="right")
    for row, (model, file) in zip(rows, names, strict=True):
        interval = row.up_interval
        table.add_row(
            f"{escape(model)}\n{escape(file)}",
            str(row.answers_rated),
            str(row.up),
            str(row.down),
            _percent(row.up_rate),
            f"{100 * interval[0]:.0f}–{_percent(interval[1])}" if interval else "–",
            f"{_percent(row.regenerate_rate)} ({row.regenerated_turns}/{row.answered_turns})",
        )
    return table
