"""ChatService: the one API every adapter (Discord, Telegram, console) calls.

A reply travels: clean + rate-limit the text → pick the conversation's model → wait for a
fair turn in the queue → load the model → fit history into the context window → stream the
reply → mark the turn answered. The question is stored as a pending turn as soon as the queue
accepts it, so a killed process loses nothing. See docs/core-api.md for how adapters use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import statistics
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from core import feedback_store, metrics
from core.ab import AbRouter
from core.engines.base import GenerationRequest, GenerationStats, Message
from core.errors import (
    BadTemperature,
    Busy,
    CannotRegenerate,
    ChatError,
    GenerationTimeout,
    PersonaModelMissing,
    TooManyWaiting,
)
from core.events import Accepted, Delta, Done, Notice, Queued, ReplyEvent, Started
from core.feedback import Buttons, Pseudonyms, Rated, RatingWriter
from core.feedback_store import Forgotten, PendingRating, Regeneration
from core.fingerprint import file_identity, remote_identity
from core.handles import LoadedModel
from core.history import ConversationStore
from core.limits import ModelTextCleaner, UserRateLimiter, clean_user_text
from core.pool import EngineFactory, ModelPool
from core.registry import RESERVED_PERSONA_NAMES, ModelEntry, ModelRegistry, Persona
from core.scheduler import FairScheduler, Ticket
from core.settings import CoreSettings
from core.turns import InterruptedReply, TurnState

log = logging.getLogger(__name__)

Scopes = str | Sequence[str] | None  # where a model choice may be set, most specific first
REGENERATE_TEMPERATURE = 0.7  # 🔁 samples at least this warm, also where answers are greedy
RATINGS_BEFORE_REGENERATE_S = 2.0  # 🔁 waits this long at most for ratings handed in before it


@dataclass(frozen=True)
class _Unsettled:
    """A generated turn waiting for `settle_delivery`: how it ended and what to store."""

    state: TurnState
    answer: str = ""
    question: str | None = None  # the part of the question the model read
    model: str | None = None
    model_file: str | None = None


@dataclass(frozen=True)
class Chosen:
    """What a conversation answers with: its model, its persona (None: the global system prompt),
    and a note for the user when a choice could not be followed (a persona's model was removed)."""

    model: str
    persona: Persona | None = None
    notice: str | None = None


@dataclass
class ServiceStats:
    queue_depth: int
    running: int
    loaded_models: list[str]
    tokens_per_s: float | None
    replies: int
    default_model: str
    models: list[str] = field(default_factory=list)
    registry_problem: str | None = None  # the models file's error (the last good registry is used)


class ChatService:
    def __init__(
        self,
        settings: CoreSettings,
        *,
        engine_factory: EngineFactory | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or ModelRegistry(settings.resolved_models_file)
        self.pool = ModelPool(self.registry, settings, engine_factory)
        self.scheduler = FairScheduler(max_waiting=settings.queue_max, concurrency=settings.parallel)
        self.limiter = UserRateLimiter(settings.rate_limit_messages, settings.rate_limit_period_s)
        self.history: ConversationStore | None = None
        self._speeds: deque[float] = deque(maxlen=20)
        self._reply_seconds: deque[float] = deque(maxlen=50)  # Started → Done, for wait estimates
        self._replies = 0
        # turns generated for `reply(settle_after_delivery=True)`, until `settle_delivery`:
        # turn id -> (state, answer, the question the model read)
        self._unsettled: dict[int, _Unsettled] = {}
        self._stopping = asyncio.Event()
        self._pseudonyms: Pseudonyms | None = None
        self._opted_out: set[str] = set()  # pseudonyms that said /feedback off (this process's view)
        self._ratings: RatingWriter | None = None
        self._ab: AbRouter | None = None  # the live A/B's routing (core/ab.py), made by start()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        url, keep_days = self.settings.resolved_database_url, self.settings.history_keep_days
        self.history = await ConversationStore.open(url, keep_days=keep_days)
        await self.history.recover()  # a killed process's pending turns become interrupted
        self.registry.get(self.settings.default_model)  # fail at start-up, not on first message
        self._pseudonyms = Pseudonyms(await feedback_store.pseudonym_salt(self.history))
        self._opted_out = await feedback_store.opted_out_keys(self.history)
        self._ratings = RatingWriter(self.history, self.settings.feedback_flush_s)
        self._ratings.start()
        self._ab = AbRouter(self.history)

    async def close(self, drain_timeout_s: float = 10.0) -> None:
        """Refuse new work, let running replies finish (up to the timeout), then stop them."""
        self.scheduler.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.scheduler.wait_idle(), drain_timeout_s)
        self._stopping.set()  # running replies stop within a token or two
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.scheduler.wait_idle(), 5)
        await self.pool.close()
        if self._ratings is not None:
            await self._ratings.close()
        if self.history is not None:
            await self.history.close()

    async def __aenter__(self) -> ChatService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- models ----------------------------------------------------------------------------
    def models(self) -> list[ModelEntry]:
        return self.registry.all()

    def model_names(self) -> list[str]:
        return self.registry.names()

    async def current_model(self, conversation_id: str, scope_id: Scopes = None) -> str:
        """The conversation's own choice, else the first scope (e.g. channel, then server) that
        has one, else the global default. Choices naming a model no longer registered are skipped.
        A persona with a model counts as a choice at the level it was chosen (`choose`).

        A running A/B test (core/ab.py) of NAME routes a conversation whose model comes from a
        scope or the global default naming NAME: its sticky arm (drawn and stored the first time)
        may send it to the candidate. The conversation's own choice is never routed."""
        return (await self.choose(conversation_id, scope_id)).model

    async def choose(self, conversation_id: str, scope_id: Scopes = None) -> Chosen:
        """The model and persona of a conversation (docs/personas.md). Levels, most specific
        first: the conversation, then each scope. The persona is the first level's that names a
        persona still in the models file. The model is the first level's /model choice (still
        registered); the persona's own model counts at the persona's level, after that level's
        /model (choosing a persona with a model clears its level's /model, so the later wins);
        personas of less specific levels than the persona in use count for nothing. Else the
        global default. A persona whose model was removed answers with the next choice, and the
        user is told (`notice`)."""
        scopes = [scope_id] if isinstance(scope_id, str) else list(scope_id or ())
        keys = [conversation_id, *(f"scope:{scope}" for scope in scopes)]
        found = await self._store.choices(keys)
        model: str | None = None
        route = True
        persona: Persona | None = None
        notice = None
        for level, key in enumerate(keys):
            chosen_model, chosen_persona = found.get(key, (None, None))
            if model is None and chosen_model and chosen_model in self.registry:
                model, route = chosen_model, level > 0  # the conversation's own choice is never routed
            if persona is None and chosen_persona and (persona := self._persona(chosen_persona)):
                if model is None and persona.model:
                    if persona.model in self.registry:
                        model, route = persona.model, False
                    else:
                        notice = f"persona {persona.name}'s model {persona.model} is no longer registered"
        name = model or self.settings.default_model
        if route:
            name = await self.ab.route(conversation_id, name, self.registry.__contains__)
        if notice:
            notice = f"Note: {notice}, so {name} answers here for now (tell the bot's admin)."
        return Chosen(name, persona, notice)

    def personas(self) -> list[Persona]:
        return self.registry.personas()

    def _persona(self, name: str) -> Persona | None:
        """The persona `name`, or None when it was removed from the models file (then skipped)."""
        return next((persona for persona in self.registry.personas() if persona.name == name), None)

    async def current_persona(self, conversation_id: str, scope_id: Scopes = None) -> Persona | None:
        """The conversation's persona (its own, else its scopes'), None: the global system prompt."""
        return (await self.choose(conversation_id, scope_id)).persona

    async def set_persona(self, conversation_id: str, name: str | None) -> Persona | None:
        """This conversation's persona; None (or "default"/"none") drops its own choice. Raises
        `UnknownPersona` (lists the personas) and `PersonaModelMissing` (its model was removed);
        nothing changes then. A persona with a model replaces the conversation's /model choice."""
        return await self._set_persona(conversation_id, name)

    async def set_scope_persona(self, scope_id: str, name: str | None) -> Persona | None:
        """A scope's default persona (a channel's, a group's): conversations without one of their
        own use it. Permission checks (admins) are the adapter's job, as for `set_scope_default`."""
        return await self._set_persona(f"scope:{scope_id}", name)

    async def _set_persona(self, key: str, name: str | None) -> Persona | None:
        if name is None or name.strip().lower() in RESERVED_PERSONA_NAMES:
            await self._store.set_persona_choice(key, None)
            return None
        persona = self.registry.persona(name.strip())
        if persona.model is not None and persona.model not in self.registry:
            raise PersonaModelMissing(persona.name, persona.model)
        await self._store.set_persona_choice(key, persona.name, clear_model=persona.model is not None)
        return persona

    @property
    def ab(self) -> AbRouter:
        """This process's view of the live A/B (the running test, the arms it has seen)."""
        if self._ab is None:
            raise RuntimeError("ChatService.start() was not called")
        return self._ab

    async def set_model(self, conversation_id: str, name: str) -> ModelEntry:
        entry = self.registry.get(name)
        await self._store.set_model_choice(conversation_id, name)
        return entry

    async def set_scope_default(self, scope_id: str, name: str) -> ModelEntry:
        entry = self.registry.get(name)
        await self._store.set_model_choice(f"scope:{scope_id}", name)
        return entry

    # -- sampling ----------------------------------------------------------------------------
    TEMPERATURE_RANGE = (0.0, 2.0)  # 0 = greedy; above 2 a small model only babbles

    async def set_temperature(self, conversation_id: str, value: float | str | None) -> None:
        """This conversation's sampling temperature (None or "default": back to the model's or
        global default). Text is what a user typed ("0.7", "0,7"); anything else is `BadTemperature`."""
        low, high = self.TEMPERATURE_RANGE
        if isinstance(value, str):
            text = value.strip().lower()
            try:
                value = None if text == "default" else float(text.replace(",", "."))
            except ValueError:
                raise BadTemperature(low, high) from None
        if value is not None and not low <= value <= high:  # NaN fails this too
            raise BadTemperature(low, high)
        await self._store.set_temperature(conversation_id, value)

    async def current_temperature(
        self, conversation_id: str, model: str | None = None, *, persona: Persona | None = None
    ) -> float:
        """The conversation's own temperature, else its persona's, else the model's default, else
        the global one."""
        if (own := await self._store.temperature(conversation_id)) is not None:
            return own
        if persona is not None and persona.temperature is not None:
            return persona.temperature
        entry = self.registry.get(model) if model and model in self.registry else None
        return entry.temperature if entry and entry.temperature is not None else self.settings.temperature

    # -- conversations ---------------------------------------------------------------------
    async def reset(self, conversation_id: str) -> int:
        """Forget the conversation (history, pending turns included, and cached KV state); returns
        messages removed. Raises `StoreUnavailable` (nothing forgotten) when the store refuses."""
        removed = await self._store.forget(conversation_id)
        await self.pool.forget(conversation_id)
        return removed

    async def record_delivery(self, turn_id: int, platform: str, handles: list[str], shown: str) -> None:
        """Remember where turn `turn_id`'s reply is shown (adapter handles, e.g. "chat:message") and
        the text of its last message, so a restart after a crash can mark it. Call it throttled and when a
        platform message is created; it never raises for a store error (it is retried later)."""
        await self._store.record_delivery(turn_id, platform, handles, shown)

    async def settle_delivery(self, turn_id: int, delivered: bool | None) -> None:
        """End a turn of `reply(settle_after_delivery=True)` once its delivery ended: `delivered`
        True, the reply as generated is on screen (answered, or interrupted if generation was);
        False, the user saw an interruption note or nothing (interrupted, out of the context);
        None, nobody knows what the user sees (a shutdown could not show the note): the turn stays
        pending, and the next start marks it interrupted and due for a note. Never raises for a
        store error (the write is kept); a turn the service already settled (failed) is left alone."""
        kept = self._unsettled.pop(turn_id, None)
        if kept is None or delivered is None:
            return
        await self._store.finish_turn(
            turn_id,
            kept.state if delivered else "interrupted",
            kept.answer,
            question=kept.question,
            model=kept.model,
            model_file=kept.model_file,
        )

    async def take_interrupted(self, platform: str) -> list[InterruptedReply]:
        """Replies on `platform` that a previous process left unfinished (with their handles),
        each returned once: call it when the adapter starts, and mark them on the platform."""
        return await self._store.take_interrupted(platform)

    def stats(self) -> ServiceStats:
        speeds = list(self._speeds)
        return ServiceStats(
            queue_depth=self.scheduler.waiting,
            running=self.scheduler.running,
            loaded_models=self.pool.loaded,
            tokens_per_s=sum(speeds) / len(speeds) if speeds else None,
            replies=self._replies,
            default_model=self.settings.default_model,
            models=self.model_names(),
            registry_problem=self.registry.problem,
        )

    async def reply(
        self,
        conversation_id: str,
        user_id: str,
        text: str,
        *,
        scope_id: Scopes = None,
        settle_after_delivery: bool = False,
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Answer `text`; see docs/core-api.md. Raises `ChatError`s with user-facing text.

        `settle_after_delivery`: a reply that ends (Done) or is cut (cancelled, closed) leaves its
        turn pending until the caller's `settle_delivery` says what the user got; errors are still
        settled here (failed). Platform adapters use it, so a reply is answered only once on screen."""
        text, notice = clean_user_text(text, self.settings.max_input_chars)
        await self.limiter.check(user_id)
        chosen = await self.choose(conversation_id, scope_id)
        model = chosen.model
        ticket = self._admit(user_id, model)
        notice = "\n".join(note for note in (notice, chosen.notice) if note) or None

        async def begin() -> int:
            return await self._store.begin_turn(conversation_id, text, user_key=self.pseudonym(user_id))

        answering = self._answer(
            ticket, model, conversation_id, text, begin, notice, settle_after_delivery, persona=chosen.persona
        )
        async with contextlib.aclosing(answering):
            async for event in answering:
                yield event

    async def regenerate(
        self,
        turn_id: int,
        user_id: str,
        *,
        scope_id: Scopes = None,
        settle_after_delivery: bool = False,
        shared: bool = False,
    ) -> AsyncGenerator[ReplyEvent, None]:
        """🔁: a new answer to turn `turn_id`'s question in the same context, the same events as
        `reply` (Accepted carries the same turn id). Sampled with a fresh seed (at least at
        REGENERATE_TEMPERATURE), and its first token may not be the old answer's, so it is never
        the same answer. The old answer is kept (`answer_versions`) with LORABOT_FEEDBACK on: it
        and the one that stays form a preference pair. Only the newest turn of a conversation;
        `CannotRegenerate` (nothing changed) otherwise. If generating fails, the old answer is
        the turn's answer again. `shared`: the conversation is everyone's there (a group, a
        thread), so anyone may; else only someone who asked in it."""
        await self.limiter.check(user_id)
        conversation_id = await feedback_store.conversation_of(self._store, turn_id)
        if conversation_id is None:
            raise CannotRegenerate("That answer is no longer stored, so it can't be regenerated.")
        chosen = await self.choose(conversation_id, scope_id)
        model = chosen.model
        ticket = self._admit(user_id, model)
        opened: list[Regeneration] = []

        async def begin() -> int:
            await self._writer.flushed(RATINGS_BEFORE_REGENERATE_S)  # a 👍 just given rates the old answer
            regeneration = await feedback_store.begin_regeneration(
                self._store, turn_id, self.pseudonym(user_id), keep_old=self.settings.feedback, shared=shared
            )
            opened.append(regeneration)
            return turn_id

        async def undo() -> None:
            if opened:
                await feedback_store.undo_regeneration(self._store, opened[0])

        answering = self._answer(
            ticket,
            model,
            conversation_id,
            "",
            begin,
            chosen.notice,
            settle_after_delivery,
            regeneration=opened,
            undo=undo,
            persona=chosen.persona,
        )
        async with contextlib.aclosing(answering):
            async for event in answering:
                yield event

    async def _answer(
        self,
        ticket: Ticket,
        model: str,
        conversation_id: str,
        text: str,
        begin: Callable[[], Awaitable[int]],
        notice: str | None,
        settle_after_delivery: bool,
        *,
        regeneration: list[Regeneration] | None = None,
        undo: Callable[[], Awaitable[None]] | None = None,
        persona: Persona | None = None,
    ) -> AsyncGenerator[ReplyEvent, None]:
        """The part `reply` and `regenerate` share: store the turn (`begin`), wait for the queue,
        generate, and settle the turn however it ends."""
        entry = self.registry.get(model)
        turn_id: int | None = None
        settled = False  # _generate marked the turn answered/interrupted
        wrote = False  # some of the new answer was generated (and may be on screen)
        outcome: TurnState = "failed"
        try:
            try:
                turn_id = await begin()
            except BaseException:
                self.scheduler.release(ticket)
                raise
            opened = regeneration[0] if regeneration else None
            yield Accepted(turn_id, opened.previous_answer if opened else None)
            if notice:
                yield Notice(notice)
            shown = None
            while not ticket.ready.done():
                if (position := self.scheduler.position(ticket)) != shown:
                    yield Queued(position)
                    shown = position
                await self.scheduler.wait_for_change(ticket)
            ticket.ready.result()  # ShuttingDown if the service closed while we waited
            async with self.pool.use(model) as handle:
                yield Started(model)
                started_at = time.monotonic()
                generated = self._generate(
                    handle,
                    entry,
                    conversation_id,
                    opened.question if opened else text,
                    turn_id,
                    defer=settle_after_delivery,
                    avoid=opened.previous_answer if opened else None,
                    persona=persona,
                )
                async for event in generated:
                    if isinstance(event, Done):
                        settled = True
                        self._reply_seconds.append(time.monotonic() - started_at)
                    elif isinstance(event, Delta):
                        wrote = True
                    yield event
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "interrupted"
            raise
        finally:
            try:
                if turn_id is not None and not settled:
                    await self._end_unfinished(turn_id, outcome, wrote, settle_after_delivery, undo)
            except Exception:  # never hide the reply's own outcome; a restart marks the turn
                log.warning("could not record the end of turn %s", turn_id, exc_info=True)
            finally:
                if turn_id is not None:
                    self.scheduler.release(ticket)

    async def _end_unfinished(
        self,
        turn_id: int,
        outcome: TurnState,
        wrote: bool,
        deferred: bool,
        undo: Callable[[], Awaitable[None]] | None,
    ) -> None:
        """Settle a turn whose answer did not complete. A regenerate that failed, or was cut
        before any new text, puts the old answer back (`undo`); a cut reply of an adapter that
        settles after delivery waits for its `settle_delivery`; anything else is stored as it
        ended. Shielded: a cancelled reply is still recorded (a store error keeps the write)."""
        if undo is not None and (outcome == "failed" or not wrote):
            await asyncio.shield(undo())
        elif deferred and outcome == "interrupted":
            self._unsettled.setdefault(turn_id, _Unsettled("interrupted"))
        else:
            await asyncio.shield(self._store.finish_turn(turn_id, outcome))

    # -- feedback ----------------------------------------------------------------------------
    def pseudonym(self, user_id: str) -> str:
        """The stored stand-in for a platform user id (salted hash; docs/privacy.md)."""
        if self._pseudonyms is None:
            raise RuntimeError("ChatService.start() was not called")
        return self._pseudonyms(user_id)

    @property
    def buttons_for_replies(self) -> Buttons | None:
        """The buttons under each final reply (None: LORABOT_FEEDBACK_BUTTONS is off)."""
        if not self.settings.feedback_buttons:
            return None
        return Buttons(rate=self.settings.feedback, regenerate=True)

    def feedback_on_for(self, user_id: str) -> bool:
        return self.settings.feedback and self.pseudonym(user_id) not in self._opted_out

    async def rate(
        self, turn_id: int, user_id: str, value: int | None, *, only_if: int | None = None
    ) -> Rated:
        """👍 (+1), 👎 (-1) or remove (None; with `only_if`, only a rating of that value) by
        `user_id` of turn `turn_id`'s current answer. Returns at once: the write is coalesced
        and stored in the background (`feedback_flushed` waits for it)."""
        return self._hand_in(user_id, value, only_if, turn_id=turn_id)

    async def rate_message(
        self, platform: str, ref: str, user_id: str, value: int | None, *, only_if: int | None = None
    ) -> Rated:
        """`rate` for a reaction on a platform message (`ref` as the sink names it): any message
        of a reply finds its turn; a message that is no reply is ignored when written."""
        return self._hand_in(user_id, value, only_if, platform=platform, ref=ref)

    def _hand_in(self, user_id: str, value: int | None, only_if: int | None, **where: object) -> Rated:
        if not self.settings.feedback:
            return Rated.OFF
        rater = self.pseudonym(user_id)
        if rater in self._opted_out:
            return Rated.OPTED_OUT
        if value not in (1, -1, None):
            raise ValueError(f"a rating is +1, -1 or None, not {value!r}")
        rating = PendingRating(rater, value, only_if=only_if, at=time.time(), **where)  # type: ignore[arg-type]
        self._writer.add(rating)
        return Rated.NOTED

    async def feedback_flushed(self, timeout: float | None = 10.0) -> bool:
        """Wait until every rating handed in so far is stored (tests, shutdown)."""
        return await self._writer.flushed(timeout)

    async def set_feedback(self, user_id: str, on: bool) -> None:
        """/feedback on|off for one person: off deletes their ratings, stores no new ones, and
        leaves the conversations they asked in out of every export."""
        key = self.pseudonym(user_id)
        await feedback_store.set_opt_out(self._store, key, not on)
        (self._opted_out.discard if on else self._opted_out.add)(key)

    async def forget_user(self, user_id: str, conversation_id: str | None = None) -> Forgotten:
        """/forget: delete the turns `user_id` asked (everywhere), their ratings, and
        `conversation_id` (their own private conversation, when not shared) with its settings."""
        await self.feedback_flushed()  # a rating still waiting would come back after the delete
        forgotten = await feedback_store.forget_user(self._store, self.pseudonym(user_id), conversation_id)
        if conversation_id is not None:
            await self.pool.forget(conversation_id)
        return forgotten

    async def latest_answered(self, conversation_id: str) -> int | None:
        """The conversation's newest answered turn: what a terminal /good, /bad or /retry means."""
        return await self._store.latest_answered(conversation_id)

    async def reply_refs(self, turn_id: int) -> tuple[str, list[str]]:
        """(platform, refs of turn `turn_id`'s reply messages, in order): what 🔁 edits in place."""
        return await self._store.reply_refs(turn_id)

    async def _model_file(self, entry: ModelEntry) -> str | None:
        """The identity of the file (or served model) that answered: ratings follow the file."""
        if entry.path is None:
            return remote_identity(entry.remote_model, entry.name)
        try:
            return await asyncio.to_thread(file_identity, entry.path)
        except OSError:
            return None

    # -- admission -------------------------------------------------------------------------
    def estimated_wait_s(self, position: int) -> float | None:
        """Rough seconds until the request at queue `position` starts (None before any reply).

        Replies run `parallel` at a time, so the queue drains at about parallel ÷ (mean seconds
        per recent reply), Little's law. The mean, not the median: answer lengths are skewed (a few
        run to the token limit), and the median under-estimated waits by half under load."""
        if not self._reply_seconds:
            return None
        per_reply = statistics.fmean(self._reply_seconds)
        return position * per_reply / self.settings.parallel

    def _admit(self, user_id: str, model: str | None = None) -> Ticket:
        """Queue the request if its expected wait stays under `max_wait_s`; refuse with the
        estimate beyond.

        The estimate uses the place the request really gets (the scheduler's serving order, not
        the whole queue's length: a user's second question in a row waits behind everyone's first).
        A user's further questions queue behind their first (answered in order) up to
        `max_waiting_per_user`; the queue's hard cap (`queue_max`) is checked by the scheduler."""
        mine = self.scheduler.waiting_for(user_id)
        if mine >= self.settings.max_waiting_per_user:
            raise TooManyWaiting(mine)
        ticket = self.scheduler.enqueue(user_id)
        position = self.scheduler.position(ticket)  # 0: it runs at once
        wait = self.estimated_wait_s(position) if position else None
        if model is not None and (backpressure := self.pool.backpressure_s(model)) > 0:
            wait = (wait or 0.0) + backpressure  # the model's servers asked us to wait (429/503)
        if wait is not None and wait > self.settings.max_wait_s:
            self.scheduler.release(ticket)
            raise Busy(max(0, position - 1), wait)
        return ticket

    # -- internals -------------------------------------------------------------------------
    @property
    def _writer(self) -> RatingWriter:
        if self._ratings is None:
            raise RuntimeError("ChatService.start() was not called")
        return self._ratings

    @property
    def _store(self) -> ConversationStore:
        if self.history is None:
            raise RuntimeError("ChatService.start() was not called")
        return self.history

    async def _generate(
        self,
        handle: LoadedModel,
        entry: ModelEntry,
        conversation_id: str,
        text: str,
        turn_id: int,
        *,
        defer: bool = False,
        avoid: str | None = None,
        persona: Persona | None = None,
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Stream the answer to `text`; `avoid`: a regenerate's old answer (sampled, fresh seed,
        another first token); `persona`: its system prompt replaces the global one."""
        settings = self.settings
        context_length = handle.context_length  # EngineClosed, never a freed model
        max_new = min(entry.max_new_tokens or settings.max_new_tokens, context_length // 2)
        system_prompt = persona.system_prompt if persona is not None else settings.system_prompt
        messages, text, trimmed = await self._fit_context(
            handle, conversation_id, text, max_new, system_prompt
        )
        if trimmed:
            yield Notice(trimmed)
        temperature = await self.current_temperature(conversation_id, entry.name, persona=persona)
        request = GenerationRequest(
            model=entry.name,
            conversation_id=conversation_id,
            messages=messages,
            max_new_tokens=max_new,
            temperature=max(temperature, REGENERATE_TEMPERATURE) if avoid is not None else temperature,
            top_p=entry.top_p if entry.top_p is not None else settings.top_p,
            seed=secrets.randbits(31) if avoid is not None else settings.seed,
            avoid_start=avoid,
        )
        stats = GenerationStats()
        started = time.perf_counter()
        first_piece_at: float | None = None
        deadline = started + settings.generation_timeout_s
        pieces: list[str] = []
        cleaner = ModelTextCleaner()  # no NUL or lone surrogate reaches a platform or the store
        stream = handle.stream(request, stats)
        interrupted = False
        try:
            while True:
                if self._stopping.is_set():  # close() ran out of patience: end this reply here
                    interrupted = True
                    break
                try:
                    # asyncio.timeout (not wait_for: on 3.11 it can swallow a cancellation)
                    async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                        piece = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise GenerationTimeout(settings.generation_timeout_s) from None
                if first_piece_at is None:
                    first_piece_at = time.perf_counter()
                if piece := cleaner.feed(piece):
                    pieces.append(piece)
                    yield Delta(piece)
        finally:
            await stream.aclose()
        if tail := cleaner.finish():  # the stream ended on half a surrogate pair
            pieces.append(tail)
            yield Delta(tail)
        if interrupted:  # after aclose: the model marks the stopped request "cancelled"
            stats.finish_reason = "interrupted"
        reply = "".join(pieces)
        elapsed = time.perf_counter() - (first_piece_at or started)
        speed = stats.completion_tokens / elapsed if elapsed > 0 and stats.completion_tokens > 1 else 0.0
        if speed:
            self._speeds.append(speed)
        tokens, prompt = stats.completion_tokens, stats.prompt_tokens
        metrics.generated(entry.name, tokens, speed, prompt, stats.reused_tokens)
        state: TurnState = "interrupted" if stats.finish_reason == "interrupted" else "answered"
        done = _Unsettled(state, reply, text, entry.name, await self._model_file(entry))  # text: as read
        if defer:  # settled by settle_delivery once the user has it
            self._unsettled[turn_id] = done
        else:
            await self._store.finish_turn(
                turn_id, state, reply, question=text, model=done.model, model_file=done.model_file
            )
        self._replies += 1
        yield Done(
            text=reply,
            model=entry.name,
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            ttft_s=(first_piece_at or time.perf_counter()) - started,
            tokens_per_s=speed,
            finish_reason=stats.finish_reason,
            extras={"reused_tokens": float(stats.reused_tokens), **stats.extras},
        )

    async def _fit_context(
        self,
        handle: LoadedModel,
        conversation_id: str,
        text: str,
        max_new: int,
        system_prompt: str | None = None,
    ) -> tuple[list[Message], str, str | None]:
        """System prompt (the persona's, else the global one) + as many recent turns as fit + the
        new message, within the window."""
        budget = handle.context_length - max_new
        prompt = system_prompt if system_prompt is not None else self.settings.system_prompt
        system: Message = {"role": "system", "content": prompt}
        history = await self._store.recent(conversation_id, self.settings.history_max_turns)
        notice = None
        base = await handle.count_tokens([system, {"role": "user", "content": ""}])
        room_for_text = budget - base
        if room_for_text < 16:
            raise ChatError("The system prompt is too long for this model's context window.")
        shortened = await handle.truncate_to_tokens(text, room_for_text)
        if shortened != text:
            notice = "Your message was too long for this model; I only read its beginning."
            text = shortened
        # When the history must shrink, drop to 3/4 of the budget, not just under it, so the next
        # turns fit without trimming again and keep the engine's cached prefix valid.
        limit = budget
        while True:
            messages = [system, *history, {"role": "user", "content": text}]
            if not history or await handle.count_tokens(messages) <= limit:
                return messages, text, notice
            history = history[2:]  # drop the oldest exchange
            limit = int(budget * 0.75)
