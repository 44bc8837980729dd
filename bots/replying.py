"""The one answer flow both platforms use: `ChatService.reply` events → a `ReplyView`.

The handler consumes the service's events without ever waiting for the platform (the view's own
task delivers), so the generation slot is released the moment generation ends; then it waits for
the final text to be on screen. Errors become the reply's text, a shutdown marks the reply as
interrupted, and every reply ends with one log line.

The turn is settled only once the user has the reply (`ChatService.settle_delivery`): answered
when its final text is on screen, interrupted when the user saw an interruption note (or nothing),
and left pending when a shutdown could not show the note, so the next start marks it. A reply cut
before its final text was on screen never goes back into the model's context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bots.delivery import DeliveryCounts, ReplyButtons, ReplyView, Sink, Typing
from bots.pacing import Pacer
from core import metrics
from core.errors import ChatError
from core.events import Accepted, Delta, Done, Notice, Queued, Started
from core.service import ChatService, Scopes

log = logging.getLogger("lorabot.replies")


@dataclass(frozen=True)
class Notes:
    """How a platform words the lines lorabot adds to a reply."""

    interrupted: str = "[interrupted: lorabot is shutting down]"
    error_prefix: str = "⚠️ "
    failed: str = "⚠️ Sorry, something went wrong while answering."

    def queued(self, position: int, eta_s: float | None) -> str:
        eta = f", about {_duration(eta_s)}" if eta_s else ""
        return f"⏳ Waiting in line: #{position}{eta}"


@dataclass(frozen=True)
class EditTiming:
    """How often a reply may change on screen: the first in-between edit after `edit_interval_s`,
    later ones further apart, up to `max_edit_interval_s`; a queue position at most once per
    `status_interval_s` (docs/delivery.md)."""

    edit_interval_s: float = 1.0
    max_edit_interval_s: float = 5.0
    status_interval_s: float = 60.0
    typing_interval_s: float = 5.0


@dataclass
class Question:
    """One message to answer, in platform-free terms."""

    conversation_id: str
    user_id: str
    text: str
    scope_id: Scopes = None
    platform: str = "chat"
    regenerate_turn: int | None = None  # 🔁: a new answer to this turn, shown in place of the old one
    shared: bool = False  # the conversation is everyone's there (group, thread): anyone may 🔁


@dataclass
class Outcome:
    text: str = ""
    result: str = "answered"  # answered, refused, error, interrupted, undelivered
    model: str = ""
    queued_s: float = 0.0
    ttft_s: float | None = None
    tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, already in the KV cache (not read again)
    tokens_per_s: float = 0.0
    counts: DeliveryCounts = field(default_factory=DeliveryCounts)
    reason: str = ""  # why it was refused or failed, for the log
    turn_id: int | None = None
    final_s: float | None = None  # from the question to its final text on screen


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def with_note(text: str, note: str) -> str:
    """The partial answer (if any), then why it stopped."""
    return f"{text.rstrip()}\n\n{note}" if text.strip() else note


async def answer_question(
    service: ChatService,
    sink: Sink,
    pacer: Pacer,
    question: Question,
    *,
    pace: EditTiming = EditTiming(),
    notes: Notes = Notes(),
    clean: Callable[[str], str] = lambda text: text,
    interrupt: asyncio.Event | None = None,
    final_timeout_s: float = 5.0,
    on_accepted: Callable[[], Awaitable[None]] | None = None,
    existing: list[tuple[Any, str]] | None = None,
) -> Outcome:
    """Answer `question` into `sink`; returns what was shown and how it went.

    `clean` makes model text safe for the place (mentions defused in groups). `interrupt` is set
    by a shutdown whose grace is over; the task is also cancelled then. After a cancellation the
    interruption note gets `final_timeout_s` to reach the platform, so shutdown never hangs on an
    unreachable platform. `on_accepted` runs once the question passed the rate limit and
    admission (e.g. Discord's thread for the answer is started only then).

    With `question.regenerate_turn` the new answer replaces the old one in `existing` (its
    messages: handle, text shown). A refusal before the new answer is accepted (not the latest
    answer, busy, rate limit) leaves the old answer untouched: the outcome is "refused" with the
    reason in `text`, for the adapter to show the person who pressed 🔁. A failure after it was
    accepted shows the old answer again with the error (the service restored it).
    """
    outcome = Outcome()
    turn_id: int | None = None

    async def record(handles: list[str], shown: str) -> None:
        if turn_id is not None:
            await service.record_delivery(turn_id, question.platform, handles, shown)

    async def settle(delivered: bool | None) -> None:
        """After the view is done; shielded: a shutdown's cancel must not lose the turn's end."""
        if turn_id is not None:
            await asyncio.shield(service.settle_delivery(turn_id, delivered))

    async def interrupted(text: str) -> None:
        """A shutdown cut the reply: show `text` (with the note) within `final_timeout_s`."""
        typing.stop()
        outcome.result, outcome.text = "interrupted", text
        await _finish_bounded(view, text, final_timeout_s)
        # the user saw the note: interrupted; else a restart marks it (the turn stays pending)
        await view.settle_records(final_timeout_s, record_now=not view.delivered)
        await settle(False if view.delivered else None)
        _log(question, outcome)

    view = ReplyView(
        sink,
        pacer,
        edit_interval_s=pace.edit_interval_s,
        max_edit_interval_s=pace.max_edit_interval_s,
        status_interval_s=pace.status_interval_s,
        on_shown=record,
    )
    outcome.counts = view.counts
    view.adopt(existing or [])
    regenerating = question.regenerate_turn is not None
    previous = ""  # a regenerate: the answer it replaces (the service puts it back if it fails)
    typing = Typing(sink, pacer, pace.typing_interval_s, view.counts)
    written, notice = "", ""
    accepted_at = time.monotonic()
    try:
        if question.regenerate_turn is not None:
            events = service.regenerate(
                question.regenerate_turn,
                question.user_id,
                scope_id=question.scope_id,
                settle_after_delivery=True,
                shared=question.shared,
            )
        else:
            events = service.reply(
                question.conversation_id,
                question.user_id,
                question.text,
                scope_id=question.scope_id,
                settle_after_delivery=True,
            )
        async with contextlib.aclosing(events):
            async for event in events:
                if interrupt is not None and interrupt.is_set():
                    raise asyncio.CancelledError
                match event:
                    case Accepted(turn_id=number, replaces=replaced):
                        turn_id = outcome.turn_id = number
                        previous = clean(replaced or "")
                        if on_accepted is not None:
                            await on_accepted()
                        view.thinking()  # where drafts stream: a placeholder at once
                    case Queued(position=position):
                        view.status(notes.queued(position, service.estimated_wait_s(position)))
                    case Started(model=model):
                        outcome.model = model
                        outcome.queued_s = time.monotonic() - accepted_at
                        if view.drafting:
                            view.thinking()  # the placeholder in place of the queue position
                        else:
                            typing.start()
                    case Notice(text=text):
                        notice = f"ℹ️ {text}\n\n"
                    case Delta(text=piece):
                        typing.stop()  # the growing text shows that we are writing
                        written += piece
                        view.update(notice + clean(written))
                    case Done() as done:
                        typing.stop()
                        written = done.text
                        outcome.ttft_s, outcome.tokens = done.ttft_s, done.completion_tokens
                        outcome.tokens_per_s = done.tokens_per_s
                        outcome.prompt_tokens = done.prompt_tokens
                        outcome.cached_tokens = int(done.extras.get("reused_tokens", 0))
                        if done.finish_reason == "interrupted":
                            outcome.result = "interrupted"
        # The service's generator is closed here: its queue slot is free before we deliver.
        final = notice + clean(written)
        if outcome.result == "interrupted":
            final = with_note(final, notes.interrupted)
    except ChatError as error:
        outcome.result = "refused" if outcome.model == "" else "error"
        outcome.reason = type(error).__name__
        if regenerating and turn_id is None:  # refused: the old answer stays as it is
            outcome.text = notes.error_prefix + error.user_message
            _log(question, outcome)
            return outcome
        if regenerating:  # the service put the old answer back
            written, notice = previous, ""
        final = with_note(notice + clean(written), notes.error_prefix + error.user_message)
    except asyncio.CancelledError:
        if regenerating and (turn_id is None or not written):  # nothing new: the old answer stays
            outcome.result, outcome.text = "interrupted", previous
            if turn_id is not None:
                await _finish_bounded(view, previous, final_timeout_s, _buttons(service, turn_id))
            _log(question, outcome)
            raise
        await interrupted(with_note(notice + clean(written), notes.interrupted))
        raise
    except Exception as error:
        log.exception("reply failed in conversation %s", question.conversation_id)
        outcome.result, outcome.reason = "error", type(error).__name__
        if regenerating and turn_id is None:  # the old answer stays as it is
            outcome.text = notes.failed
            return outcome
        if regenerating:
            written, notice = previous, ""
        final = with_note(notice + clean(written), notes.failed)
    finally:
        typing.stop()
    outcome.text = final
    shows_answer = outcome.result == "answered" or (regenerating and outcome.result == "error")
    buttons = _buttons(service, turn_id) if shows_answer else None
    try:
        await view.finish(final, buttons)
    except asyncio.CancelledError:  # generated, but not yet on screen when the grace ran out
        await interrupted(with_note(final, notes.interrupted))
        raise
    outcome.final_s = time.monotonic() - accepted_at
    if not view.delivered:
        outcome.result = "undelivered"
    await settle(view.delivered)  # first: a store write made after the user saw the text finds it settled
    await view.settle_records()
    await view.drain(final_timeout_s)  # the buttons, when they need an edit of their own
    _log(question, outcome)
    return outcome


def _buttons(service: ChatService, turn_id: int | None) -> ReplyButtons | None:
    """The buttons under turn `turn_id`'s final text (None: buttons are off)."""
    offered = service.buttons_for_replies
    if offered is None or turn_id is None:
        return None
    return ReplyButtons(turn_id, offered.rate, offered.regenerate)


async def _finish_bounded(
    view: ReplyView, text: str, timeout_s: float, buttons: ReplyButtons | None = None
) -> None:
    """Show `text` if the platform takes it within `timeout_s`; never longer (shutdown)."""
    finishing = asyncio.ensure_future(view.finish(text, buttons))
    done, _ = await asyncio.wait({finishing}, timeout=timeout_s)
    if not done:
        await view.close()


def _log(question: Question, outcome: Outcome) -> None:
    _count(question.platform, outcome)
    counts = outcome.counts
    ttft = f"{outcome.ttft_s:.2f}s" if outcome.ttft_s is not None else "-"
    log.info(
        "reply %s%s conversation=%s model=%s queued=%.1fs ttft=%s prompt=%d cached=%d tokens=%d tok/s=%.1f "
        "calls=%d 429s=%d",
        outcome.result,
        f" ({outcome.reason})" if outcome.reason else "",
        question.conversation_id,
        outcome.model or "-",
        outcome.queued_s,
        ttft,
        outcome.prompt_tokens,
        outcome.cached_tokens,
        outcome.tokens,
        outcome.tokens_per_s,
        counts.calls,
        counts.slowdowns,
    )


def _count(platform: str, outcome: Outcome) -> None:
    """The reply's metrics (core/metrics.py): its outcome, waits and times, from the question."""
    started = bool(outcome.model) and outcome.result != "refused"
    first_token = outcome.queued_s + outcome.ttft_s if started and outcome.ttft_s is not None else None
    metrics.reply_finished(
        platform,
        outcome.model,
        outcome.result,
        queued_s=outcome.queued_s if started else None,
        first_token_s=first_token,
        final_s=outcome.final_s if outcome.result == "answered" else None,
    )
