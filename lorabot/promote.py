"""`lorabot models promote CANDIDATE --replace NAME`: the promotion gate, then an atomic promotion.

The gate (training/evaluate/gate.py) evaluates [NAME, CANDIDATE] side by side — held-out
perplexity, the pairwise judge when one is given, decode speed — and refuses with exit status 2,
saying which figure failed and by how much, when the candidate is worse beyond the margins.
Otherwise (or with `--force`, which logs a WARNING) `ModelRegistry.promote` points NAME at the
candidate's weights in one atomic write of the models file and keeps the old entry as
NAME-previous; running bots load the new file at NAME's next turn. Every promotion, forced or
not, is appended to DATA_DIR/promotions.jsonl with the gate's figures, and the evaluation report
is kept in DATA_DIR/promotions/<time>-<CANDIDATE>/ (or --out).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from core.errors import ChatError
from core.fingerprint import file_identity, remote_identity
from core.registry import ModelEntry, ModelRegistry, Promotion, RegistryError
from core.settings import CoreSettings, SettingsError
from lorabot.common import console, settings

if TYPE_CHECKING:
    from training.evaluate.gate import GateDecision

log = logging.getLogger("lorabot.promote")
PROMOTIONS_LOG = "promotions.jsonl"


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{escape(message)}[/red]")
    return typer.Exit(2)


def promote_with_gate(
    candidate: str,
    replace: str,
    *,
    force: bool = False,
    max_ppl_increase: float = 0.05,
    min_judge_win: float = 0.4,
    max_slowdown: float = 0.2,
    heldout: Path | str | None = None,
    heldout_limit: int | None = None,
    prompts: Path | None = None,
    max_tokens: int = 160,
    judge: str | None = None,
    judge_url: str | None = None,
    judge_model: str | None = None,
    out: Path | None = None,
    progress: bool = True,
    core_settings: CoreSettings | None = None,
) -> None:
    """Evaluate CANDIDATE against REPLACE, print the gate's table, and promote CANDIDATE to the
    name REPLACE when it passes (or `force`). Raises typer.Exit(2) on a refusal or bad input,
    after printing one line that says why; nothing is changed then. Call it outside an event loop
    (the evaluation runs its own, as `lorabot eval` does)."""
    try:
        from training.evaluate.errors import EvalError
        from training.evaluate.gate import Margins, run_gate
        from training.evaluate.runner import EvalOptions
    except ImportError as error:  # the `eval` extra (tqdm, psutil, matplotlib) is not installed
        raise _fail(
            f"`lorabot models promote` needs the `eval` extra ({error.name or error} is missing): "
            "pip install -e '.[eval]'"
        ) from None
    current = core_settings or settings()
    registry = ModelRegistry(current.resolved_models_file)
    try:
        registry.check_promotion(candidate, replace)  # bad names fail now, not after the evaluation
        evaluated = {name: registry.get(name) for name in (replace, candidate)}
        margins = Margins(max_ppl_increase, min_judge_win, max_slowdown)
    except (RegistryError, EvalError) as error:
        raise _fail(str(error)) from None
    except ChatError as error:
        raise _fail(error.user_message) from None
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = out or current.data_dir / "promotions" / f"{stamp}-{candidate}"
    options = EvalOptions(
        models=[replace, candidate],
        out_dir=out_dir,
        heldout=heldout,
        prompts=prompts,
        max_new_tokens=max_tokens,
        heldout_limit=heldout_limit,
        judge=judge,
        judge_url=judge_url,
        judge_model=judge_model,
        judge_api_key=os.environ.get("LORABOT_JUDGE_API_KEY"),
        progress=progress,
    )
    try:
        decision, _report = run_gate(current, candidate, replace, margins, options)
    except (EvalError, SettingsError) as error:
        raise _fail(str(error)) from None
    print_decision(decision)
    forced = not decision.passed
    if forced and not force:
        raise _fail(
            f"refused: {candidate} is worse than {replace}: {decision.reason}. Nothing was changed "
            f"(report: {out_dir / 'report.md'}); --force promotes it anyway, and is logged."
        )
    if forced:
        log.warning(
            "promoting %s to %s although the gate failed (--force): %s", candidate, replace, decision.reason
        )
    try:
        promotion = registry.promote(candidate, replace, expected=evaluated)
    except RegistryError as error:
        raise _fail(str(error)) from None
    try:
        record_promotion(current.data_dir, promotion, decision, forced=forced, report_dir=out_dir)
    except OSError as error:  # promoted all the same: say the record is missing
        console.print(f"[red]could not append to {current.data_dir / PROMOTIONS_LOG}: {error}[/red]")
    console.print(
        f"[green]Promoted[/green] {candidate} to {replace}{' [red](forced)[/red]' if forced else ''}: "
        f"{replace} now serves {escape(_where(promotion.new))}; the old entry is kept as "
        f"{promotion.previous} (roll back: lorabot models promote {promotion.previous} --replace {replace} "
        "--force)"
    )


def print_decision(decision: GateDecision) -> None:
    table = Table(title=f"Promotion gate: {decision.candidate} against {decision.baseline}")
    for column in ("figure", decision.baseline, decision.candidate, "bound", "result"):
        table.add_column(column)
    for check in decision.checks:
        form = {"held-out perplexity": "{:.3f}", "judge win rate": "{:.0%}"}.get(check.figure, "{:.1f}")

        def number(value: float | None, form: str = form) -> str:
            return "–" if value is None else form.format(value)

        op = "≤" if check.figure == "held-out perplexity" else "≥"
        result = {True: "[green]pass[/green]", False: "[red]FAIL[/red]", None: "not measured"}[check.passed]
        bound = "–" if check.bound is None else f"{op} {number(check.bound)}"
        table.add_row(check.figure, number(check.baseline), number(check.candidate), bound, result)
    console.print(table)
    for check in decision.checks:
        console.print(f"  {'✗' if check.passed is False else '·'} {escape(check.why)}")


def _where(entry: ModelEntry) -> str:
    return str(entry.path) if entry.path is not None else ", ".join(entry.urls)


def _identity(entry: ModelEntry) -> str | None:
    """The same identity turns.model_file records (core/fingerprint.py)."""
    if entry.path is None:
        return remote_identity(entry.remote_model, entry.name)
    try:
        return file_identity(entry.path)
    except OSError:
        return None


def record_promotion(
    data_dir: Path, promotion: Promotion, decision: GateDecision, *, forced: bool, report_dir: Path
) -> dict[str, Any]:
    """Append one JSON line to DATA_DIR/promotions.jsonl: who replaced what, the gate's figures,
    and whether the gate was overridden (`forced`). One write of one line, so concurrent writers
    never interleave."""
    record = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "name": promotion.replace,
        "candidate": promotion.candidate,
        "previous": promotion.previous,
        "from": {"where": _where(promotion.old), "model_file": _identity(promotion.old)},
        "to": {"where": _where(promotion.new), "model_file": _identity(promotion.new)},
        "forced": forced,
        "gate": {"passed": decision.passed, "checks": [asdict(check) for check in decision.checks]},
        "report": str(report_dir),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    fd = os.open(data_dir / PROMOTIONS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)
    return record


def promote(
    candidate: Annotated[str, typer.Argument(help="Registered model to promote.")],
    replace: Annotated[
        str, typer.Option("--replace", help="Registered name it takes over (what the bots serve).")
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Promote even when the gate fails (logged and recorded).")
    ] = False,
    max_ppl_increase: Annotated[
        float, typer.Option(help="Held-out perplexity may rise by at most this fraction.")
    ] = 0.05,
    min_judge_win: Annotated[
        float, typer.Option(help="With a judge: the candidate's win rate must be at least this.")
    ] = 0.4,
    max_slowdown: Annotated[
        float, typer.Option(help="Decode tokens/s may drop by at most this fraction (1: not checked).")
    ] = 0.2,
    heldout: Annotated[
        Path | None, typer.Option(help="Held-out ShareGPT file (default: the tiny preset's split).")
    ] = None,
    heldout_limit: Annotated[
        int | None, typer.Option(min=1, help="Score only the first N held-out conversations.")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="Prompt set for speed and the judge (default: the shipped set).")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="New tokens per answer at most (greedy).")] = 160,
    judge: Annotated[
        str | None, typer.Option(help="Registered model that judges the answers pairwise.")
    ] = None,
    judge_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible base URL (…/v1) of a judge; key from LORABOT_JUDGE_API_KEY."),
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="Model name to ask at --judge-url.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for the evaluation report (default DATA_DIR/promotions/<time>-CANDIDATE)."),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
) -> None:
    """Promote CANDIDATE to the name NAME (--replace) if it is not worse: held-out perplexity,
    judge and speed are compared side by side; running bots switch at their next turn."""
    from core.logs import configure_logging

    current = settings()
    if not logging.getLogger().handlers:  # a --force warning reaches stderr, redacted like the bot's
        configure_logging("WARNING")
    promote_with_gate(
        candidate, replace, force=force, max_ppl_increase=max_ppl_increase, min_judge_win=min_judge_win,
        max_slowdown=max_slowdown, heldout=heldout, heldout_limit=heldout_limit, prompts=prompts,
        max_tokens=max_tokens, judge=judge, judge_url=judge_url, judge_model=judge_model, out=out,
        progress=progress, core_settings=current,
    )  # fmt: skip


def mount(app: typer.Typer) -> None:
    """Register the `promote` command on `lorabot models`."""
    app.command("promote")(promote)
