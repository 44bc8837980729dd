"""Training data from the chats' feedback: JSONL rows in the shapes trl's trainers read.

Every row is conversational (lists of {"role", "content"} messages). The prompt is what the model
read for that answer: the system prompt, the conversation's earlier answered turns (their current
answers, in the window ConversationStore.recent keeps) and the question.

- KTO (`KTOTrainer`): {"prompt", "completion", "label"}, one row per rated answer (turn, version).
  An answer replaced by a 🔁 keeps its own ratings. Label: net rating (👍 − 👎) > 0 → True, < 0 →
  False; a tie is dropped (majority wins; ties dropped).
- DPO (`DPOTrainer`): {"prompt", "chosen", "rejected"} for regenerated turns: chosen is the answer
  that stayed, or the best net-👍 one when the one that stayed is net 👎; rejected is each other
  answer that is not net 👍 (a pair with two net-👍 answers, or no answer to prefer, is dropped).
- SFT (`SFTTrainer`): {"messages"} for each net-👍 answer that is its turn's current answer.

Privacy: a conversation in which anyone who said /feedback off asked anything is left out whole,
and every text goes through `scrub` (mentions, platform ids, the invisible characters the adapters
insert). Conversation ids, pseudonyms and message refs are never written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from core.schema import answer_versions, feedback_opt_out, ratings, turns

if TYPE_CHECKING:
    from core.history import ConversationStore

FORMATS = ("kto", "dpo", "sft")
Message = dict[str, str]
Row = dict[str, Any]

# -- scrubbing ------------------------------------------------------------------------------------
_INVISIBLE = re.compile("[\u2060\u200b]")  # WORD JOINER (Telegram's defused @), ZERO WIDTH SPACE
_DISCORD_CHANNEL = re.compile(r"<#\d+>")
_DISCORD_MENTION = re.compile(r"<@[!&]?\d+>")  # user, nickname and role mentions
_TELEGRAM_USER_LINK = re.compile(r"tg://user\?id=\d+")
# @everyone, @here, Telegram @usernames, and the "@Display Name" the Discord adapter writes for a
# mention (core sees only its first word); an e-mail's '@' follows a word character and is kept
_AT_WORD = re.compile(r"(?<![\w@])@\w+(?:[.\-]\w+)*")
_DECORATOR_END = re.compile(r"[ \t]*(?:\(|\r?\n|$)")  # what follows a decorator's name


def scrub(text: str) -> str:
    """`text` without anything that names or addresses a person: mentions become "@user", channel
    mentions "#channel", and the invisible characters the adapters add to defuse mentions go."""
    text = _INVISIBLE.sub("", text)
    text = _DISCORD_CHANNEL.sub("#channel", text)
    text = _DISCORD_MENTION.sub("@user", text)
    text = _TELEGRAM_USER_LINK.sub("@user", text)
    return _AT_WORD.sub(_at_word, text)


def _at_word(match: re.Match[str]) -> str:
    """'@user', except a decorator line inside a ``` fence (`@property`, `@app.get(...)`), so answers
    about code stay correct. The price: a bare mention alone on a line of a code fence stays too."""
    text, start, end = match.string, match.start(), match.end()
    line_start = text.rfind("\n", 0, start) + 1
    if text.count("```", 0, start) % 2 and not text[line_start:start].strip():
        if _DECORATOR_END.match(text, end):
            return match.group()
    return "@user"


# -- what is read -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportOptions:
    format: str  # one of FORMATS
    system_prompt: str
    history_turns: int = 20  # LORABOT_HISTORY_MAX_TURNS: the window the model read
    model: str | None = None  # only answers this registered model wrote
    since: float | None = None  # epoch seconds: only ratings given / regenerates made since


@dataclass(frozen=True)
class Answer:
    """One answer of a turn (its current one, or one a 🔁 replaced) with its ratings."""

    version: int
    text: str
    model: str | None
    replaced_at: float | None = None  # None: the turn's current answer
    up: int = 0  # ratings given since `since`
    down: int = 0
    before: int = 0  # ratings given before `since` (ignored)

    @property
    def net(self) -> int:
        return self.up - self.down

    @property
    def ever_rated(self) -> bool:
        return bool(self.up or self.down or self.before)


@dataclass(frozen=True)
class Turn:
    id: int
    prompt: list[Message]
    answers: list[Answer]  # by version; the current one last

    @property
    def current(self) -> Answer:
        return self.answers[-1]


@dataclass
class ExportSummary:
    format: str
    rows: int = 0
    desirable: int = 0  # KTO label True
    undesirable: int = 0  # KTO label False
    conflicting_answers: int = 0  # rated both 👍 and 👎
    resolved_by_majority: int = 0
    ties_dropped: int = 0
    pairs_replaced_liked: int = 0  # DPO: a replaced answer is net 👍 (never rejected)
    pairs_no_preference: int = 0  # DPO: the answer that stayed is net 👎 and none is net 👍
    opted_out_conversations: int = 0  # left out whole: someone in them said /feedback off
    skipped_model: int = 0
    skipped_date: int = 0

    @property
    def resolution(self) -> str:
        if self.format == "dpo":
            return (
                "chosen: the answer that stayed, or the best net-👍 one when it is net 👎; a replaced "
                "net-👍 answer is never rejected (such pairs are dropped)"
            )
        return "majority wins; ties dropped"


# -- reading ------------------------------------------------------------------------------------------
@dataclass
class _Stored:
    turns: list[sa.Row[Any]]  # answered turns of the conversations kept, by conversation and id
    tallies: dict[tuple[int, int], tuple[int, int, int]]  # (turn, version) -> (up, down, before)
    replaced: dict[int, list[sa.Row[Any]]]  # turn -> its replaced answers, by version
    opted_out_conversations: int


def _queries(since: float | None) -> dict[str, sa.Executable]:
    """The reads of one export, in SQL that both backends run alike."""
    fed_back = sa.union(sa.select(ratings.c.turn_id), sa.select(answer_versions.c.turn_id))
    candidates = sa.select(turns.c.conversation_id).where(turns.c.id.in_(fed_back.scalar_subquery()))
    opted = sa.select(turns.c.conversation_id).where(
        turns.c.user_key.in_(sa.select(feedback_opt_out.c.user_key))
    )
    conversation = turns.c.conversation_id
    kept_conversation = sa.and_(conversation.in_(candidates), conversation.not_in(opted))
    kept = sa.select(turns.c.id).where(turns.c.state == "answered", kept_conversation)
    after = ratings.c.updated_at >= since if since is not None else sa.true()
    left_out = candidates.where(conversation.in_(opted)).distinct().subquery()
    return {
        "turns": sa.select(
            turns.c.id, conversation, turns.c.question, turns.c.answer, turns.c.model, turns.c.version
        )
        .where(turns.c.state == "answered", kept_conversation)
        .order_by(turns.c.conversation_id, turns.c.id),
        "tallies": sa.select(
            ratings.c.turn_id,
            ratings.c.version,
            sa.func.sum(sa.case((sa.and_(after, ratings.c.value > 0), 1), else_=0)),
            sa.func.sum(sa.case((sa.and_(after, ratings.c.value < 0), 1), else_=0)),
            sa.func.sum(sa.case((after, 0), else_=1)),
        )
        .where(ratings.c.turn_id.in_(kept))
        .group_by(ratings.c.turn_id, ratings.c.version),
        "replaced": sa.select(answer_versions)
        .where(answer_versions.c.turn_id.in_(kept))
        .order_by(answer_versions.c.turn_id, answer_versions.c.version),
        "left_out": sa.select(sa.func.count()).select_from(left_out),
    }


async def _read(store: ConversationStore, since: float | None) -> _Stored:
    queries = _queries(since)

    async def work(db: AsyncConnection) -> _Stored:
        stored_turns = list((await db.execute(queries["turns"])).all())
        tallies = {
            (int(turn), int(version)): (int(up), int(down), int(before))
            for turn, version, up, down, before in (await db.execute(queries["tallies"])).all()
        }
        replaced: dict[int, list[sa.Row[Any]]] = defaultdict(list)
        for row in (await db.execute(queries["replaced"])).all():
            replaced[int(row.turn_id)].append(row)
        left_out = int((await db.execute(queries["left_out"])).scalar_one())
        return _Stored(stored_turns, tallies, replaced, left_out)

    return await store.read(work, "read the feedback for an export")


def history_window(count: int, max_turns: int) -> int:
    """How many of `count` earlier answered turns the model read: ConversationStore.recent's
    window, which starts in jumps of half the window."""
    if count <= max_turns:
        return count
    step = max(1, max_turns // 2)
    return count - -(-(count - max_turns) // step) * step


def _turns(stored: _Stored, options: ExportOptions) -> Iterator[Turn]:
    """The turns that have ratings or replaced answers, each with the prompt the model read."""
    system: Message = {"role": "system", "content": scrub(options.system_prompt)}
    fed_back = set(stored.replaced) | {turn_id for turn_id, _ in stored.tallies}
    earlier: dict[str, list[sa.Row[Any]]] = defaultdict(list)
    for row in stored.turns:
        before = earlier[row.conversation_id]
        if int(row.id) in fed_back:
            context = before[len(before) - history_window(len(before), options.history_turns) :]
            prompt = [system, *_exchanges(context), {"role": "user", "content": scrub(row.question)}]
            yield Turn(int(row.id), prompt, _answers(stored, row))
        before.append(row)


def _exchanges(rows: list[sa.Row[Any]]) -> list[Message]:
    messages: list[Message] = []
    for row in rows:
        messages += [
            {"role": "user", "content": scrub(row.question)},
            {"role": "assistant", "content": scrub(row.answer)},
        ]
    return messages


def _answers(stored: _Stored, row: sa.Row[Any]) -> list[Answer]:
    turn_id = int(row.id)
    answers = [
        Answer(int(old.version), old.answer, old.model, float(old.replaced_at))
        for old in stored.replaced.get(turn_id, [])
    ]
    answers.append(Answer(int(row.version), row.answer, row.model))
    return [_with_tally(answer, stored.tallies.get((turn_id, answer.version))) for answer in answers]


def _with_tally(answer: Answer, tally: tuple[int, int, int] | None) -> Answer:
    if tally is None:
        return answer
    up, down, before = tally
    return dataclasses.replace(answer, up=up, down=down, before=before)


# -- the formats ------------------------------------------------------------------------------------
def _completion(answer: Answer) -> list[Message]:
    return [{"role": "assistant", "content": scrub(answer.text)}]


def _rated_label(answer: Answer, options: ExportOptions, summary: ExportSummary) -> bool | None:
    """True (net 👍), False (net 👎) or None (not rated, skipped or a tie), counting why."""
    if not answer.ever_rated:
        return None
    if options.model is not None and answer.model != options.model:
        summary.skipped_model += 1
        return None
    if not (answer.up or answer.down):  # rated only before --since
        summary.skipped_date += 1
        return None
    if answer.up and answer.down:
        summary.conflicting_answers += 1
        if answer.net == 0:
            summary.ties_dropped += 1
            return None
        summary.resolved_by_majority += 1
    return answer.net > 0


def kto_rows(turns_: Iterable[Turn], options: ExportOptions, summary: ExportSummary) -> Iterator[Row]:
    for turn in turns_:
        for answer in turn.answers:
            label = _rated_label(answer, options, summary)
            if label is None:
                continue
            summary.desirable += label
            summary.undesirable += not label
            yield {"prompt": turn.prompt, "completion": _completion(answer), "label": label}


def sft_rows(turns_: Iterable[Turn], options: ExportOptions, summary: ExportSummary) -> Iterator[Row]:
    for turn in turns_:
        if _rated_label(turn.current, options, summary):
            yield {"messages": [*turn.prompt, *_completion(turn.current)]}


def _preferred(turn: Turn) -> Answer | None:
    """The answer that stayed, unless it is net 👎: then the best net-👍 one (None if there is none)."""
    if turn.current.net >= 0:
        return turn.current
    liked = [answer for answer in turn.answers if answer.net > 0]
    return max(liked, key=lambda answer: (answer.net, answer.version)) if liked else None


def _pair_time(chosen: Answer, rejected: Answer) -> float:
    """When the pair came to be: the 🔁 that replaced one of its answers."""
    return rejected.replaced_at if rejected.replaced_at is not None else chosen.replaced_at or 0.0


def _pair_skipped(chosen: Answer, other: Answer, options: ExportOptions, summary: ExportSummary) -> bool:
    """A pair outside --model (both answers must be that model's) or --since, counted."""
    if options.model is not None and {chosen.model, other.model} != {options.model}:
        summary.skipped_model += 1
        return True
    if options.since is not None and _pair_time(chosen, other) < options.since:
        summary.skipped_date += 1
        return True
    return False


def dpo_rows(turns_: Iterable[Turn], options: ExportOptions, summary: ExportSummary) -> Iterator[Row]:
    for turn in turns_:
        chosen = _preferred(turn)
        anchor = chosen or turn.current  # without a preferred answer: count the pairs it would make
        for other in turn.answers:
            if other is anchor or _pair_skipped(anchor, other, options, summary):
                continue
            if chosen is None:
                summary.pairs_no_preference += 1
            elif other.net > 0:
                summary.pairs_replaced_liked += 1
            else:
                yield {"prompt": turn.prompt, "chosen": _completion(chosen), "rejected": _completion(other)}


_BUILDERS = {"kto": kto_rows, "dpo": dpo_rows, "sft": sft_rows}


async def export_feedback(
    store: ConversationStore, options: ExportOptions
) -> tuple[list[Row], ExportSummary]:
    """The rows of one export (see the module docstring) and what was counted on the way."""
    if options.format not in _BUILDERS:
        raise ValueError(f"unknown export format {options.format!r}: one of {', '.join(FORMATS)}")
    stored = await _read(store, options.since)
    summary = ExportSummary(options.format, opted_out_conversations=stored.opted_out_conversations)
    rows = list(_BUILDERS[options.format](_turns(stored, options), options, summary))
    summary.rows = len(rows)
    return rows, summary


def write_jsonl(rows: Iterable[Row], path: Path) -> None:
    """One JSON object per line, UTF-8; written aside and renamed, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, path)
