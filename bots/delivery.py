"""Show a reply on a platform: one delivery task per reply that only ever sends the newest text.

The reply's handler sets what *should* be on screen (`status`, `update`, `finish`) without
waiting; the view's own task makes the platform match, one call at a time, at the pace the
`Pacer` allows. So generation never waits for the platform (a 429 holds no generation slot), and
text that changed while a call waited is coalesced into the next one.

Adapters give a `Sink`: send a message, edit one, show "typing", and say how long a text is for
the platform. Sinks raise `SlowDown` (429), `MessageGone` (deleted meanwhile) and
`TransientFailure` (5xx, timeout); anything else is permanent and ends the delivery with a log.

A sink that can stream *drafts* (Telegram's sendMessageDraft in private chats: an ephemeral
preview that is no message) shows everything before the final text as a draft: a placeholder at
once, then the newest text at the edit pace, sent again before the preview would lapse; the
final text is then sent as new messages. Where the platform refuses drafts (`DraftsUnavailable`,
or any other failure of a draft) the view goes on by messages and edits, with the newest text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bots.pacing import EDIT, FINAL, NEW_MESSAGE, STATUS, Pacer
from bots.text import split_message

log = logging.getLogger(__name__)
EDIT_GROWTH = 1.5  # each in-between edit of a reply waits this much longer than the last one


class SlowDown(Exception):
    """The platform answered 429; `retry_after` seconds, for one chat or (`everywhere`) all."""

    def __init__(self, retry_after: float, *, everywhere: bool = False) -> None:
        super().__init__(f"rate limited, retry after {retry_after} s")
        self.retry_after = retry_after
        self.everywhere = everywhere


class MessageGone(Exception):
    """The message to edit no longer exists (deleted by a moderator or the user)."""


class TransientFailure(Exception):
    """A 5xx, a timeout or a dropped connection: the same call may work later."""


class DraftsUnavailable(Exception):
    """The platform refuses drafts here (a group, an API server without the method): the reply
    goes on by messages and edits. The sink remembers the refusal for its chat (or everywhere)."""


class MaybeSent(Exception):
    """A send timed out after the platform may have taken it: sending again could show the text
    twice, and without the message's id it cannot be edited either (Telegram has no nonce)."""


@dataclass(frozen=True)
class ReplyButtons:
    """The buttons under a reply's final text (👍 👎 🔁), for turn `turn_id`; sinks render them."""

    turn_id: int
    rate: bool
    regenerate: bool


class Sink(Protocol):
    """Where one reply goes: a chat/channel, and the message it answers.

    `send` and `edit` also take `buttons=ReplyButtons(...)` for the last message of a final text;
    the view passes the keyword only then, so a sink without buttons need not accept it."""

    chat_key: str  # the pacing key: one chat or channel
    typing_key: str  # the pacing key of typing indicators (Discord limits them apart from messages)
    limit: int  # the platform's maximum message length, in `length` units

    def length(self, text: str) -> int:
        """Length as the platform counts it (Telegram: UTF-16 code units)."""

    async def send(self, text: str) -> Any:
        """Send a new message; return a handle `edit` and `ref` accept."""

    async def edit(self, handle: Any, text: str) -> None:
        """Replace the text of a message sent earlier."""

    async def typing(self) -> None:
        """Show the "typing…" indicator once."""

    def ref(self, handle: Any) -> str:
        """A string that finds the message again after a restart (e.g. "chat:message")."""


class DraftSink(Sink, Protocol):
    """A sink that can also stream drafts (the view checks `drafts` with getattr: optional)."""

    drafts: bool  # drafts can be streamed here now (a private chat, not refused before)
    draft_refresh_s: float  # an unchanged draft is sent again after this long (before it lapses)

    async def draft(self, text: str) -> None:
        """Show `text` as the reply's draft ("" shows a placeholder such as "Thinking…")."""

    def draft_ref(self) -> str:
        """Like `ref`, for a reply that has no message yet: a restart posts its note there."""


# (refs of the reply's messages, the text of its last message): what a restart needs to mark it
ShownCallback = Callable[[list[str], str], Awaitable[None]]


@dataclass
class _Shown:
    handle: Any
    text: str
    buttons: ReplyButtons | None = None


@dataclass
class DeliveryCounts:
    calls: int = 0  # platform calls made for this reply (typing and drafts included)
    drafts: int = 0  # of them, drafts
    slowdowns: int = 0  # 429s answered to them
    failures: int = 0  # other failed calls


class ReplyView:
    """One reply, possibly spread over several messages, kept in step with the newest text."""

    def __init__(
        self,
        sink: Sink,
        pacer: Pacer,
        *,
        edit_interval_s: float,
        max_edit_interval_s: float | None = None,
        status_interval_s: float = 60.0,
        final_retries: int = 4,
        max_resends: int = 3,
        on_shown: ShownCallback | None = None,
        record_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.pacer = pacer
        self.edit_interval_s = edit_interval_s
        # Each edit of the growing text waits half as long again as the one before, up to this:
        # short replies stream smoothly, a long or slow one costs a few calls, not one a second.
        self.max_edit_interval_s = max(edit_interval_s, max_edit_interval_s or edit_interval_s)
        self.status_interval_s = status_interval_s
        self._text_edits = 0
        self.final_retries = final_retries
        self.max_resends = max_resends  # messages of this reply found deleted and sent again, at most
        self._gone = 0
        self.on_shown = on_shown
        self.record_every_s = record_every_s
        self.counts = DeliveryCounts()
        self._clock = clock
        self._text = ""  # the newest text (or status line while there is no text)
        self._kind: str | None = None  # "status", "text" or "final"
        self._buttons: ReplyButtons | None = None  # under the final text's last message
        self._shown: list[_Shown] = []
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_call = float("-inf")
        self._last_record = float("-inf")
        self._record_due = False  # a newer state than the store has was shown
        self._recorder: asyncio.Task[None] | None = None
        self._failed_final = 0
        self.delivered = False  # the final text is on screen
        # drafts: everything before the final text is a draft, until the platform refuses one
        self.drafting = bool(getattr(sink, "drafts", False))
        self._draft: str | None = None  # the draft shown last (None: none yet)
        self._draft_is_text = False  # it shows the reply's text (not a status or placeholder)
        self._draft_at = float("-inf")

    # -- what should be on screen (never waits) ---------------------------------------------
    @property
    def handles(self) -> list[Any]:
        return [shown.handle for shown in self._shown]

    @property
    def last_text(self) -> str:
        """The text of the reply's last message on screen (the one a restart marks)."""
        return self._shown[-1].text if self._shown else ""

    @property
    def next_edit_interval_s(self) -> float:
        """How long the next in-between edit waits after the last call: the view's schedule."""
        return min(self.max_edit_interval_s, self.edit_interval_s * EDIT_GROWTH**self._text_edits)

    def status(self, line: str) -> None:
        """A status line (queue position) in the first message, until text arrives."""
        if self._kind in (None, "status"):
            self._set(line, "status")

    def thinking(self) -> None:
        """Drafts: the placeholder ("Thinking…") until text arrives. Without drafts nothing:
        the typing indicator says it."""
        if self.drafting and self._kind in (None, "status"):
            self._set("", "status")

    def update(self, text: str) -> None:
        """The growing reply; shown at most once per edit interval."""
        if self._kind != "final" and text.strip():
            self._set(text, "text")

    async def finish(self, text: str, buttons: ReplyButtons | None = None) -> None:
        """Show the complete text (`buttons` under its last message: they ride with the final
        edit, no call of their own) and wait until it is on screen (or delivery gave up)."""
        self._buttons = buttons
        self._set(text if text.strip() else "(no answer)", "final")
        await self._done.wait()

    def adopt(self, shown: list[tuple[Any, str]]) -> None:
        """Start from messages already on screen (handle, text), e.g. the answer 🔁 replaces:
        they are edited in place, and those the new text does not need are deleted at the end."""
        self._shown = [_Shown(handle, text) for handle, text in shown]
        if self._shown:
            self.drafting = False  # the new text goes into those messages

    async def drain(self, timeout_s: float) -> None:
        """Wait (up to `timeout_s`) for the delivery task to end: after `finish` returned, it may
        still put the buttons under the final text, an edit of their own. Past the timeout it
        stops: the text is on screen, buttons are not worth holding a shutdown for."""
        if self._task is None or self._task.done():
            return
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not done:
            await self.close()

    async def close(self) -> None:
        """Stop delivering (shutdown after its grace): whatever is on screen stays."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._done.set()

    def _set(self, text: str, kind: str) -> None:
        self._text, self._kind = text, kind
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lorabot-delivery")

    # -- the delivery task ----------------------------------------------------------------
    def _wanted(self) -> list[str]:
        if self._kind == "status":
            return [self._text] if self._text else []  # "": a draft's placeholder, no message
        return split_message(self._text, self.sink.limit, length=self.sink.length)

    def _next_step(self) -> tuple[int, str] | None:
        """The first message that differs from what should be shown (text or buttons), and its text."""
        wanted = self._wanted()
        for index, chunk in enumerate(wanted):
            if index >= len(self._shown) or self._shown[index].text != chunk:
                return index, chunk
            if (
                self._kind == "final"
                and index == len(wanted) - 1
                and self._shown[index].buttons != self._buttons
            ):
                return index, chunk
        return None

    def _buttons_for(self, index: int) -> ReplyButtons | None:
        if self._kind != "final" or index != len(self._wanted()) - 1:
            return None
        return self._buttons

    def _priority(self, index: int) -> int:
        if self._kind == "final":
            return FINAL
        if index >= len(self._shown):
            return NEW_MESSAGE
        return STATUS if self._kind == "status" else EDIT

    def _text_on_screen(self) -> bool:
        """The final text is shown in full (the buttons may still be missing)."""
        wanted = self._wanted()
        return self._kind == "final" and [shown.text for shown in self._shown] == wanted

    async def _run(self) -> None:
        try:
            while True:
                if self.drafting and self._kind != "final":
                    await self._draft_step()
                    continue
                if not self.delivered and self._text_on_screen():
                    self.delivered = True  # the user has the answer; the buttons follow (see drain)
                    self._done.set()
                step = self._next_step()
                if step is None:
                    if self._kind == "final":
                        if len(self._shown) > len(self._wanted()):  # a shorter answer replaced a longer one
                            await self._remove(self._shown[len(self._wanted()) :])
                            del self._shown[len(self._wanted()) :]
                            self._record(force=True)
                        self.delivered = True
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                index, _ = step
                if index < len(self._shown) and self._kind != "final":  # an edit: keep to our pace
                    interval = self.status_interval_s if self._kind == "status" else self.next_edit_interval_s
                    wait = self._last_call + interval - self._clock()
                    if wait > 0:
                        self._wake.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(wait):
                                await self._wake.wait()  # finish() cuts the wait short
                        continue
                if not await self._slot(self._priority(index), functools.partial(self._priority, index)):
                    continue
                step = self._next_step()  # the newest text, read after the wait
                if step is None:
                    continue
                if not await self._apply(*step):
                    return
        except Exception:
            log.exception("delivery in %s failed", self.sink.chat_key)
        finally:
            self._done.set()

    async def _slot(self, priority: int, current: Callable[[], int]) -> bool:
        """Wait for the pacer; False if the reply became final meanwhile (`current()`, the call's
        priority now, went up: ask again, at that priority)."""
        acquiring = asyncio.ensure_future(self.pacer.acquire(self.sink.chat_key, priority))
        try:
            while True:
                self._wake.clear()
                waking = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({acquiring, waking}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waking.cancel()
                if acquiring.done():
                    acquiring.result()
                    return True
                if current() < priority:
                    acquiring.cancel()
                    return False
        except asyncio.CancelledError:
            acquiring.cancel()
            raise

    async def _apply(self, index: int, chunk: str) -> bool:
        """Make message `index` show `chunk`; False when delivery must stop."""
        self._last_call = self._clock()
        self.counts.calls += 1
        new = index >= len(self._shown)
        buttons = self._buttons_for(index)
        extra = {"buttons": buttons} if buttons is not None else {}
        try:
            if new:
                handle = await self.sink.send(chunk, **extra)
                self._shown.append(_Shown(handle, chunk, buttons))
            else:
                await self.sink.edit(self._shown[index].handle, chunk, **extra)
                self._shown[index].text = chunk
                self._shown[index].buttons = buttons
                if self._kind == "text":
                    self._text_edits += 1
        except SlowDown as slow:
            self.counts.slowdowns += 1
            log.warning("429 from the platform in %s: waiting %.1f s", self.sink.chat_key, slow.retry_after)
            self.pacer.hold(None if slow.everywhere else self.sink.chat_key, slow.retry_after)
            return True
        except MessageGone:
            self._gone += 1
            if self._gone > self.max_resends:  # e.g. an automod deleting every message of ours
                log.warning(
                    "reply messages in %s were deleted %d times; giving up on this reply",
                    self.sink.chat_key,
                    self._gone,
                )
                return False
            log.info("a reply message in %s was deleted; sending it again", self.sink.chat_key)
            # only that one: the later messages are still on screen and take its place by edits
            # (each shows the chunk before its own), the last chunk is sent anew: text once, in order
            del self._shown[index]
            return True
        except MaybeSent as error:
            self.counts.failures += 1
            log.warning(
                "a message in %s may have been sent (%s); not sending it twice", self.sink.chat_key, error
            )
            return False
        except TransientFailure as error:
            self.counts.failures += 1
            if self._kind != "final":
                log.info("skipped a call in %s: %s", self.sink.chat_key, error)
                await asyncio.sleep(max(self.edit_interval_s, 1.0))  # a new message retries no sooner
                return True
            self._failed_final += 1
            if self._failed_final > self.final_retries:
                if new:
                    log.error("could not deliver a reply in %s: %s", self.sink.chat_key, error)
                    return False
                log.warning(
                    "editing the final text failed in %s; sending it as a new message", self.sink.chat_key
                )
                await self._remove(self._shown[index:])  # else its stale text stays above the new one
                del self._shown[index:]
                self._failed_final = 0
                return True
            await asyncio.sleep(min(8.0, 2.0 ** (self._failed_final - 1)))
            return True
        except Exception as error:  # permanent: no permission, chat gone, bad request
            self.counts.failures += 1
            log.warning("can't answer in %s (giving up on this reply): %s", self.sink.chat_key, error)
            return False
        self._record(force=new)
        return True

    # -- drafts -------------------------------------------------------------------------------
    def _draft_wanted(self) -> str:
        """The draft for what should be shown: the status line, "" (placeholder), or the text's
        last message-sized part (a draft holds one message; the final text is split as usual)."""
        if self._kind != "text":
            return self._text
        return split_message(self._text, self.sink.limit, length=self.sink.length)[-1]

    def _draft_interval(self) -> float:
        """How long a changed draft waits after the last call: text at the edit schedule, a queue
        place as seldom as its edits (the refresh shows the newest one), the placeholder soon."""
        if self._kind == "text":
            return self.next_edit_interval_s
        return self.status_interval_s if self._text and self._draft else self.edit_interval_s

    def _draft_priority(self) -> int:
        if self._kind == "final":
            return FINAL
        return NEW_MESSAGE if self._draft is None else EDIT

    async def _draft_step(self) -> None:
        """One step while drafting: wait for a change (or for the draft to need refreshing), keep
        to the edit pace, then show the newest draft."""
        refresh_s: float = getattr(self.sink, "draft_refresh_s", 20.0)
        now = self._clock()
        refresh_in = self._draft_at + refresh_s - now
        if self._draft is not None:
            if self._draft_wanted() == self._draft:
                wait = refresh_in  # unchanged: only before the preview lapses
            else:
                wait = min(self._last_call + self._draft_interval() - now, refresh_in)
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()  # new text or finish() cuts the wait short
                return
        priority = self._draft_priority()
        if not await self._slot(priority, self._draft_priority):
            return
        if self._kind == "final" or not self.drafting:
            return  # the slot goes unused: the final text asks at its own priority
        text = self._draft_wanted()  # the newest, read after the wait
        self._last_call = self._clock()
        self.counts.calls += 1
        self.counts.drafts += 1
        try:
            await self.sink.draft(text)  # type: ignore[attr-defined]
        except DraftsUnavailable as error:
            log.info("no drafts in %s (%s): going on by messages", self.sink.chat_key, error)
            self.drafting = False
            return
        except SlowDown as slow:
            self.counts.slowdowns += 1
            log.warning("429 from the platform in %s: waiting %.1f s", self.sink.chat_key, slow.retry_after)
            self.pacer.hold(None if slow.everywhere else self.sink.chat_key, slow.retry_after)
            return
        except (TransientFailure, MaybeSent) as error:  # a draft is shown again by the next one
            self.counts.failures += 1
            log.info("skipped a draft in %s: %s", self.sink.chat_key, error)
            await asyncio.sleep(max(self.edit_interval_s, 1.0))
            return
        except Exception as error:  # refused in a way the sink does not know: messages then
            self.counts.failures += 1
            log.warning("a draft failed in %s (%s): going on by messages", self.sink.chat_key, error)
            self.drafting = False
            return
        first = self._draft is None
        first_text = self._kind == "text" and not self._draft_is_text
        if self._kind == "text" and text != self._draft and not first:
            self._text_edits += 1
        self._draft, self._draft_at = text, self._last_call
        self._draft_is_text = self._kind == "text"
        # a restart must know the reply is on its way (no message yet) and, once there is some,
        # its text; later drafts are recorded now and then, like edits
        self._record(force=first or first_text)

    async def _remove(self, stale: list[_Shown]) -> None:
        """Delete messages about to be replaced by new ones, where the sink can (best effort: a
        failure is logged, the new message is sent anyway)."""
        delete = getattr(self.sink, "delete", None)  # optional: `async def delete(handle)`
        if delete is None:
            return
        for shown in stale:
            await self.pacer.acquire(self.sink.chat_key, FINAL)
            self.counts.calls += 1
            try:
                await delete(shown.handle)
            except MessageGone:
                pass
            except Exception as error:
                log.warning("could not remove a stale reply message in %s: %s", self.sink.chat_key, error)

    # -- telling the store where the reply is shown (never on the delivery path) ----------------
    def _record(self, *, force: bool) -> None:
        """Have the store learn where the reply is shown (new messages at once, edits now and then).

        The write runs in a task of its own: a locked or slow store never delays what users see.
        States shown while a write waits are coalesced: the next write takes the newest."""
        now = self._clock()
        if self.on_shown is None or not (force or now - self._last_record >= self.record_every_s):
            return
        self._last_record = now
        self._record_due = True
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._store_records(), name="lorabot-record")

    async def _store_records(self) -> None:
        assert self.on_shown is not None
        while self._record_due:
            self._record_due = False
            refs, last = self._where_shown()  # the newest
            try:
                await self.on_shown(refs, last)
            except Exception as error:  # the store's trouble must not stop the reply
                log.warning("could not record a reply's messages: %s", error)

    def _where_shown(self) -> tuple[list[str], str]:
        """The refs of the reply's messages and its last message's text; while only a draft is
        shown, the sink's draft ref and the draft's text (a restart sends its note as a message)."""
        if not self._shown and self._draft is not None and hasattr(self.sink, "draft_ref"):
            return [self.sink.draft_ref()], self._draft if self._draft_is_text else ""
        return [self.sink.ref(handle) for handle in self.handles], self.last_text

    async def settle_records(self, timeout_s: float | None = None, *, record_now: bool = False) -> bool:
        """Wait for the store to have the last recorded state (`record_now`: the state on screen
        now); False if `timeout_s` passed first. The write itself is never cut (a store write
        cancelled in the middle leaves its database connection closing forever): it ends within
        the store's lock timeout."""
        if record_now and (self._shown or self._draft is not None):
            self._record(force=True)
        recorder = self._recorder
        if recorder is None or recorder.done():
            return True
        done, _ = await asyncio.wait({recorder}, timeout=timeout_s)
        return bool(done)


class Typing:
    """ "typing…" while a reply is being generated: one indicator per interval, only in a free slot."""

    def __init__(self, sink: Sink, pacer: Pacer, interval_s: float, counts: DeliveryCounts) -> None:
        self.sink = sink
        self.pacer = pacer
        self.interval_s = interval_s
        self.counts = counts
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="lorabot-typing")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()  # sinks never let a cancel reach a request in flight

    async def _loop(self) -> None:
        while True:
            if self.pacer.try_acquire(self.sink.typing_key):
                self.counts.calls += 1
                try:
                    await self.sink.typing()
                except SlowDown as slow:
                    self.counts.slowdowns += 1
                    self.pacer.hold(None if slow.everywhere else self.sink.typing_key, slow.retry_after)
                except Exception as error:  # an indicator is never worth failing a reply
                    log.debug("typing indicator failed: %s", error)
            await asyncio.sleep(self.interval_s)
