"""`lorabot bench load`: the real bot process against a fake Discord or Telegram, N users at once.

One run, in one event loop:

1. The project's fake platform server (bench/fakes) starts on loopback with the platform's
   published rate limits.
2. The real bot starts as its own process (`python -m lorabot run`) pointed at the fake, on
   the embedded model, with a fresh data directory and default settings (LORABOT_* variables of
   this environment pass through; no .env is read); its output goes to a log file.
3. Simulated users ask their questions (bench/load_users.py), each waiting for the final answer
   before the next, until all are done or `timeout_s` is over; then the bot gets SIGTERM.
4. The engine alone (ChatService in this process, same model, settings and prompts, the same
   users asking concurrently) gives the reference replies/s: `delivery_vs_engine` is what the
   platform path delivers of what the engine can do.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.load_users import (
    Ask,
    DiscordWorld,
    FinishedTurns,
    Place,
    TelegramWorld,
    Tracker,
    World,
    is_status,
    layout,
    normalized,
    question_for,
)

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "answered_or_told_pct": (">=", 100.0),
    "unanswered": ("<=", 0),
    "answered_pct": (">=", 95.0),
    "delivery_vs_engine": (">=", 0.8),
    "api_calls_per_reply": ("<=", 8.0),
    "stuck": ("<=", 0),
    "ratings_lost": ("<=", 0),
    "answers_without_buttons": ("<=", 0),
}
POLL_S = 0.25
REGENERATE_REFUSED_S = 15.0  # 🔁 that changed nothing on screen this long was refused (shown to the presser)
PROGRESS_S = 30.0
START_TIMEOUT_S = 180.0
EXIT_TIMEOUT_S = 60.0  # after SIGTERM; then SIGKILL


def _bot_env(world: World, run_dir: Path) -> dict[str, str]:
    """This environment without any platform settings, plus the fake's URLs and a fresh data dir."""
    from core.embedded import EMBEDDED_MODEL_NAME

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "TELEGRAM_"))}
    env.update(world.bot_env())
    env.update(
        LORABOT_DATA_DIR=str(run_dir / "data"),
        LORABOT_MODELS_FILE=str(run_dir / "data" / "models.toml"),  # none: the embedded model only
        LORABOT_DEFAULT_MODEL=EMBEDDED_MODEL_NAME,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
    )
    return env


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def _wait_for(predicate, timeout_s: float, process: asyncio.subprocess.Process | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        if process is not None and process.returncode is not None:
            return False
        await asyncio.sleep(0.1)
    return False


class Run:
    """One platform run: fake server, bot process, users, tracker."""

    def __init__(
        self,
        world: World,
        run_dir: Path,
        *,
        messages: int,
        timeout_s: float,
        think_s: float,
        ramp_s: float,
        patience_s: float,
        seed: int,
        progress: bool,
        rate: bool = True,
    ) -> None:
        self.world = world
        self.rate = rate
        self.rating = RatingCounts()
        self.run_dir = run_dir
        self.messages = messages
        self.timeout_s = timeout_s
        self.think_s = think_s
        self.ramp_s = ramp_s
        self.patience_s = patience_s
        self.random = random.Random(seed)
        self.turns = FinishedTurns(run_dir / "data" / "history.sqlite3")
        self.tracker = Tracker(world, self.turns)
        self.log_path = run_dir / "bot.log"
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = self.ended_at = 0.0
        self.progress = progress
        self.load = LoadAverage()

    async def start_bot(self) -> None:
        (self.run_dir / "data").mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:  # noqa: ASYNC230 (creating an empty file)
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "lorabot",
                "run",
                cwd=self.run_dir,
                env=_bot_env(self.world, self.run_dir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        if not await _wait_for(self.world.connected, START_TIMEOUT_S, self.process):
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"the bot did not connect to the fake {self.world.platform} (log {self.log_path}):\n{tail}"
            )

    async def user(self, user: int, deadline: float) -> None:
        await asyncio.sleep(self.ramp_s * user / max(1, len(self.world.places)))
        for turn in range(self.messages):
            if time.monotonic() >= deadline or self.process.returncode is not None:  # type: ignore[union-attr]
                break
            ask = await self.world.post(user, question_for(user, turn))
            self.tracker.add(ask)
            give_up = min(deadline, ask.sent_at + self.patience_s) if self.patience_s > 0 else deadline
            while ask.outcome is None and time.monotonic() < give_up:
                if self.process.returncode is not None:  # type: ignore[union-attr]
                    return
                await asyncio.sleep(POLL_S)
            if ask.outcome is None:
                break  # this user gave up waiting
            if self.rate and ask.outcome == "answered":
                await self.rate_answer(user, ask, give_up)
            if turn + 1 < self.messages:
                await asyncio.sleep(self.think_s * self.random.uniform(0.5, 1.5))

    async def rate_answer(self, user: int, ask: Ask, give_up: float) -> None:
        """What people do with a final answer: 1 in 10 press 🔁 and wait for the new answer; then
        everyone rates it, 👍 or 👎, by a button or (every other user, where the platform sends the
        bot reactions) a reaction. Each answer gets one rating: the bot must store every one."""
        await asyncio.sleep(self.random.uniform(0.5, 2.0))  # reading it
        buttons = self.world.buttons(ask)
        again = next((button for button in buttons if "again" in button), None)
        if again is not None and self.random.random() < 0.1:
            await self.regenerate(user, ask, again, give_up)
            buttons = self.world.buttons(ask)
        up = self.random.random() < 0.7
        emoji = "👍" if up else "👎"
        if user % 2 == 0 and await self.world.react(user, ask, emoji):
            self.rating.reactions += 1
            return
        button = next((b for b in buttons if (":up:" if up else ":down:") in b), None)
        if button is None:
            self.rating.no_buttons += 1
            return
        await self.world.press(user, ask, button)
        self.rating.presses += 1

    async def regenerate(self, user: int, ask: Ask, button: str, give_up: float) -> None:
        """Press 🔁 and wait until the answer on screen is a new finished answer to the question."""
        old = normalized(self.world.current_text(ask))
        await self.world.press(user, ask, button)
        self.rating.regenerations += 1
        pressed = time.monotonic()
        while time.monotonic() < give_up:
            text = self.world.current_text(ask)
            if normalized(text) == old:
                if time.monotonic() - pressed > REGENERATE_REFUSED_S:  # told why not (a newer turn there)
                    return
            elif not is_status(text) and self.turns.matches(ask, text):
                self.rating.regenerated_at.append(time.monotonic())
                return
            await asyncio.sleep(POLL_S)

    async def watch(self, users: asyncio.Future) -> None:
        """Poll the fake and the bot's history until every user is done."""
        next_db = next_progress = 0.0
        while not users.done():
            changed = False
            now = time.monotonic()
            if now >= next_db:
                next_db = now + 1.0
                changed = await asyncio.to_thread(self.turns.refresh)
            self.tracker.poll(turns_changed=changed)
            if now >= next_progress:
                next_progress = now + PROGRESS_S
                self.load.sample()
                if self.progress:
                    self._progress(now)
            await asyncio.sleep(POLL_S)

    def _progress(self, now: float) -> None:
        """One line on stderr: how far the run is (the table or JSON comes at the end)."""
        outcomes = [ask.outcome for ask in self.tracker.all]
        print(
            f"[bench load {self.world.platform}] {now - self.started_at:5.0f} s: sent {len(outcomes)}, "
            f"answered {outcomes.count('answered')}, refused {outcomes.count('refused')}, "
            f"errors {outcomes.count('error')}, waiting {outcomes.count(None)}",
            file=sys.stderr,
            flush=True,
        )

    async def drive(self) -> None:
        await self.start_bot()
        self.started_at = time.monotonic()
        deadline = self.started_at + self.timeout_s
        crowd = asyncio.gather(*(self.user(user, deadline) for user in range(len(self.world.places))))
        await asyncio.gather(crowd, self.watch(crowd))
        await asyncio.sleep(1.0)  # the last edits and database writes
        self.turns.refresh()
        self.tracker.poll(turns_changed=True)
        self.ended_at = time.monotonic()

    async def stop_bot(self) -> dict[str, Any]:
        process = self.process
        assert process is not None
        if process.returncode is not None:
            return {"bot_exit_s": None, "bot_exit_code": process.returncode, "bot_died_early": True}
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        killed = False
        try:
            await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            killed = True
            await process.wait()
        return {
            "bot_exit_s": time.monotonic() - sent,
            "bot_exit_code": process.returncode,
            "bot_killed": killed,
            "bot_died_early": False,
        }


def _rating_summary(run: Run) -> dict[str, Any]:
    """Ratings given and stored (none may be lost: one per answer, and the bot coalesces nothing
    away), and regenerations answered."""
    if not run.rate:
        return {}
    counts = run.rating
    stored = run.turns.ratings()
    return {
        "ratings_given": counts.ratings,
        "ratings_by_reaction": counts.reactions,
        "ratings_stored": stored,
        "ratings_lost": counts.ratings - stored,
        "answers_without_buttons": counts.no_buttons,
        "regenerations": counts.regenerations,
        "regenerations_answered": counts.regenerated,
    }


def _common(texts: list[str]) -> dict[str, int]:
    """The three most frequent texts (numbers masked, so "#12" and "#13" count as one)."""
    masked = Counter(re.sub(r"\d+", "N", " ".join(text.split()))[:100] for text in texts)
    return dict(masked.most_common(3))


def _summary(run: Run, extra: dict[str, Any]) -> dict[str, Any]:
    asks: list[Ask] = run.tracker.all
    world = run.world
    sent = len(asks)
    planned = len(world.places) * run.messages
    answered = [a for a in asks if a.outcome == "answered"]
    refused = [a for a in asks if a.outcome == "refused"]
    errors = [a for a in asks if a.outcome == "error"]
    unanswered = planned - len(answered) - len(refused) - len(errors)
    calls = world.delivery_calls()
    delivery = calls["send"] + calls["edit"] + calls.get("draft", 0) + calls["typing"]
    responses = len(answered) + len(refused) + len(errors)
    # a regenerated answer is a reply too: the engine wrote it and the platform shows it
    finals = [a.final_at for a in answered if a.final_at is not None] + run.rating.regenerated_at
    first_sent = min((a.sent_at for a in asks), default=run.started_at)
    window = (max(finals) - first_sent) if finals else 0.0
    log = run.log_path.read_text(errors="replace") if run.log_path.exists() else ""

    def since_sent(attribute: str, group: list[Ask]) -> list[float]:
        return [getattr(a, attribute) - a.sent_at for a in group if getattr(a, attribute) is not None]

    first_text = since_sent("first_text_at", answered)
    final = since_sent("final_at", answered)
    first_response = since_sent("first_response_at", asks)
    by_place: dict[str, dict[str, int]] = {}
    for ask in asks:
        counts = by_place.setdefault(ask.place, {"sent": 0, "answered": 0, "refused": 0})
        counts["sent"] += 1
        if ask.outcome in ("answered", "refused"):
            counts[ask.outcome] += 1
    return {
        "platform": world.platform,
        "users": len(world.places),
        "messages_per_user": run.messages,
        "planned": planned,
        "sent": sent,
        "answered": len(answered),
        "refused": len(refused),
        "errors": len(errors),
        "unanswered": unanswered,
        "answered_pct": 100.0 * len(answered) / planned if planned else 0.0,
        "answered_or_told_pct": 100.0 * (len(answered) + len(refused)) / planned if planned else 0.0,
        "by_place": by_place,
        "refusal_texts": _common([a.text for a in refused]),
        "error_texts": _common([a.text.strip().splitlines()[-1] for a in errors]),  # the note
        "first_response_p50_s": _percentile(first_response, 50),
        "first_response_p95_s": _percentile(first_response, 95),
        "first_text_p50_s": _percentile(first_text, 50),
        "first_text_p95_s": _percentile(first_text, 95),
        "final_text_p50_s": _percentile(final, 50),
        "final_text_p95_s": _percentile(final, 95),
        "api_calls": calls,
        "api_calls_per_reply": delivery / responses if responses else float(delivery),
        **world.rate_limited(),
        "delivered_replies_per_s": (len(answered) + run.rating.regenerated) / window if window > 0 else 0.0,
        "answer_chars_mean": statistics.mean(len(a.text) for a in answered) if answered else 0.0,
        "duration_s": run.ended_at - run.started_at,
        "loadavg": run.load.mean,
        "timed_out": any(a.outcome is None for a in asks) or sent < planned,
        **extra,
        **_rating_summary(run),
        "log": str(run.log_path),
        "log_lines": len(log.splitlines()),
        "log_reply_lines": sum(
            1 for line in log.splitlines() if "reply " in line and "conversation=" in line
        ),
    }


async def platform_run(
    platform: str,
    places: list[Place],
    run_dir: Path,
    *,
    messages: int,
    timeout_s: float,
    think_s: float = 2.0,
    ramp_s: float = 10.0,
    patience_s: float = 0.0,
    seed: int = 1,
    progress: bool = False,
    rate: bool = True,
    drafts: bool | None = None,
) -> dict[str, Any]:
    """`drafts`: Telegram's TELEGRAM_DRAFTS for the bot (None: its default)."""
    if platform == "telegram":
        from bench.fakes.telegram import FakeBotAPI

        fake: Any = FakeBotAPI()
        await fake.start()
        world: World = TelegramWorld(fake, places, drafts=drafts)
    else:
        from bench.fakes.discord import FakeDiscord

        fake = FakeDiscord()
        await fake.start()
        world = DiscordWorld(fake, places)
    run = Run(
        world,
        run_dir,
        messages=messages,
        timeout_s=timeout_s,
        think_s=think_s,
        ramp_s=ramp_s,
        patience_s=patience_s,
        seed=seed,
        progress=progress,
        rate=rate,
    )
    exit_info: dict[str, Any] = {}
    try:
        try:
            await run.drive()
            run.turns.refresh()
            statuses, pending = run.tracker.statuses(), run.turns.pending()
            # a status is stuck when no work is left behind it (a timed-out run has queued replies)
            status = {
                "status_at_end": statuses,
                "pending_at_end": pending,
                "stuck": max(0, statuses - pending),
            }
        finally:
            if run.process is not None:
                exit_info = await run.stop_bot()
        exit_info["stuck_after_exit"] = run.tracker.statuses()
        return _summary(run, {**status, **exit_info})
    finally:
        run.turns.close()
        await (fake.stop() if platform == "telegram" else fake.close())


async def engine_run(places: list[Place], messages: int, data_dir: Path, budget_s: float) -> dict[str, Any]:
    """The same users and prompts straight into ChatService: what the engine alone produces.

    Every user asks at once (each waiting for its answer before the next question), so the
    engine is as busy as it can be; after `budget_s` the rest is cancelled. Counted: the replies
    finished, and every character generated (unfinished replies' included) per second of the run,
    which `measure` turns into replies/s at the bot's answer length.
    """
    from core.embedded import EMBEDDED_MODEL_NAME
    from core.errors import ChatError
    from core.events import Delta, Done
    from core.service import ChatService
    from core.settings import CoreSettings, load_settings

    settings = load_settings(
        CoreSettings,
        "LORABOT_",
        _env_file=None,
        data_dir=data_dir,
        models_file=data_dir / "models.toml",
        default_model=EMBEDDED_MODEL_NAME,
    )
    # capacity, not admission: no queue cap, wait limit or per-user rate limit turns anyone away
    unlimited = {"queue_max": max(settings.queue_max, 2 * len(places)), "rate_limit_messages": 1_000_000}
    unlimited.update({name: 1e9 for name in ("max_wait_s",) if name in CoreSettings.model_fields})
    settings = settings.model_copy(update=unlimited)
    service = ChatService(settings)
    await service.start()
    lengths: list[int] = []
    finished: list[float] = []
    errors: list[str] = []
    chars = 0

    async def user(index: int, conversation: str) -> None:
        nonlocal chars
        for turn in range(messages):
            try:
                async for event in service.reply(
                    f"bench:{conversation}", f"bench:{index}", question_for(index, turn)
                ):
                    if isinstance(event, Delta):
                        chars += len(event.text)
                    elif isinstance(event, Done):
                        lengths.append(len(event.text.strip()))
                        finished.append(time.monotonic())
            except ChatError as error:  # e.g. a generation timeout: counted, and the user goes on
                errors.append(error.user_message)

    load = LoadAverage()
    try:
        async for _ in service.reply("bench:warmup", "bench:warmup", "Hello!"):  # loads the model
            pass
        started = time.monotonic()
        crowd = [asyncio.ensure_future(user(index, place.conversation)) for index, place in enumerate(places)]
        deadline = started + budget_s
        while not all(task.done() for task in crowd) and time.monotonic() < deadline:
            load.sample()
            await asyncio.wait(crowd, timeout=min(10.0, max(0.0, deadline - time.monotonic())))
        complete = all(task.done() for task in crowd)
        elapsed = (max(finished) if complete and finished else time.monotonic()) - started
        generated = chars
        for task in crowd:
            task.cancel()
        for outcome in await asyncio.gather(*crowd, return_exceptions=True):
            if isinstance(outcome, Exception):
                raise outcome  # an engine failure is the benchmark's failure
    finally:
        await service.close()
    return {
        "engine_replies": len(finished),
        "engine_errors": len(errors),
        "engine_s": elapsed,
        "engine_complete": complete,
        "engine_finished_per_s": len(finished) / elapsed if elapsed > 0 else 0.0,
        "engine_chars_per_s": generated / elapsed if elapsed > 0 else 0.0,
        "engine_answer_chars_mean": statistics.mean(lengths) if lengths else 0.0,
        "engine_loadavg": load.mean,
        "parallel": settings.parallel,
        "max_new_tokens": settings.max_new_tokens,
        "model": settings.default_model,
    }


@dataclass
class RatingCounts:
    """The rating step's figures."""

    presses: int = 0  # 👍/👎 buttons pressed
    reactions: int = 0  # 👍/👎 reactions the platform sent the bot
    no_buttons: int = 0  # answers that showed no rating buttons (a defect when buttons are on)
    regenerations: int = 0  # 🔁 pressed
    regenerated_at: list[float] = field(default_factory=list)  # of those, when a new answer was final

    @property
    def regenerated(self) -> int:
        return len(self.regenerated_at)

    @property
    def ratings(self) -> int:
        return self.presses + self.reactions


class LoadAverage:
    """The machine's 1-minute load average, sampled now and then (how busy the cores were)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


async def measure(
    platform: str,
    *,
    users: int,
    messages: int,
    timeout_s: float,
    groups: int = 5,
    group_users: int = 2,
    dms: int = 10,
    workdir: Path | None = None,
    engine: bool = True,
    engine_s: float = 300.0,
    drafts: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run the platform (Telegram: with drafts on and off, `drafts_modes`), then the engine alone;
    `options` go to `platform_run`."""
    places = layout(platform, users, groups=groups, group_users=group_users, dms=dms)
    modes = drafts_modes(platform, drafts)
    runs: dict[str, dict[str, Any]] = {}
    for mode in modes:  # Telegram: drafts on, then off (the same users and questions)
        run_dir = Path(tempfile.mkdtemp(prefix=f"lorabot-load-{platform}-", dir=workdir))
        extra = {} if mode is None else {"drafts": mode}
        figures = await platform_run(
            platform, places, run_dir, messages=messages, timeout_s=timeout_s, **extra, **options
        )
        figures["run_dir"] = str(run_dir)
        (run_dir / "platform.json").write_text(json.dumps(figures))  # kept should the engine run fail
        runs["on" if mode else "off"] = figures
    result = next(iter(runs.values()))  # the first mode's run is the one the targets judge
    if engine:
        (run_dir / "engine").mkdir()
        try:
            result.update(await engine_run(places, messages, run_dir / "engine", engine_s))
        except Exception as error:  # noqa: BLE001 (the platform figures still count)
            result["engine_failed"] = f"{type(error).__name__}: {error}"
        if "engine_chars_per_s" in result:
            # replies/s at the length of the answers the bot delivered (sampling varies lengths)
            length = result["answer_chars_mean"] or result["engine_answer_chars_mean"]
            result["engine_replies_per_s"] = result["engine_chars_per_s"] / length if length else 0.0
        rate = result.get("engine_replies_per_s")
        for figures in runs.values():
            figures["delivery_vs_engine"] = figures["delivered_replies_per_s"] / rate if rate else None
    for figures in runs.values():
        figures["targets_met"] = all(
            _meets(figures[name], *target) for name, target in TARGETS.items() if name in figures
        )
    if len(runs) > 1:
        result["drafts_compare"] = {
            mode: {name: figures.get(name) for name in DRAFT_FIGURES} for mode, figures in runs.items()
        }
        result["targets_met"] = all(figures["targets_met"] for figures in runs.values())
    return result


# what `--platform telegram` compares between drafts on and off (docs/benchmarks.md, "Telegram drafts")
DRAFT_FIGURES = (
    "answered",
    "planned",
    "api_calls_per_reply",
    "api_calls",
    "first_text_p50_s",
    "first_text_p95_s",
    "final_text_p50_s",
    "final_text_p95_s",
    "responses_429",
    "fake_rate_refused",
    "delivered_replies_per_s",
    "delivery_vs_engine",
    "targets_met",
    "loadavg",  # the runs follow each other: other work on the machine may differ between them
    "run_dir",
)


def drafts_modes(platform: str, drafts: str | None = None) -> list[bool | None]:
    """Telegram: the TELEGRAM_DRAFTS settings to run, from `drafts` or LORABOT_BENCH_DRAFTS
    ("on,off" by default: both, drafts on first; "on" or "off": one run). Discord: one run."""
    if platform != "telegram":
        return [None]
    spec = drafts if drafts is not None else os.environ.get("LORABOT_BENCH_DRAFTS", "on,off")
    modes = [part.strip().lower() for part in spec.split(",") if part.strip()]
    if not modes or any(mode not in ("on", "off") for mode in modes):
        raise ValueError(f"drafts must be 'on', 'off' or 'on,off', not {spec!r}")
    return [mode == "on" for mode in dict.fromkeys(modes)]


def run(platform: str, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(measure(platform, **kwargs))


def _meets(value: object, op: str, target: float) -> bool:
    if value is None:
        return False
    return float(value) >= target if op == ">=" else float(value) <= target  # type: ignore[arg-type]


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _drafts_table(compare: dict[str, dict[str, Any]]) -> Table:
    """Telegram's runs side by side: drafts on (sendMessageDraft) and off (a message edited)."""
    table = Table(title="Telegram drafts (TELEGRAM_DRAFTS): the same users with drafts on and off")
    table.add_column("metric")
    for mode in compare:
        table.add_column(f"drafts {mode}")
    for name in DRAFT_FIGURES:
        values = [compare[mode].get(name) for mode in compare]
        if name == "api_calls":
            values = [", ".join(f"{k} {v}" for k, v in (value or {}).items()) for value in values]
        table.add_row(name, *(_fmt(value) for value in values))
    return table


def main(platform: str, *, json_output: bool, **kwargs: Any) -> None:
    result = run(platform, progress=True, **kwargs)
    if json_output:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
        return
    console = Console()
    table = Table(
        title=f"lorabot bench load — {platform}, {result['users']} users × "
        f"{result['messages_per_user']} messages, "
        f"{result.get('model', '')}, parallel {result.get('parallel', '?')}"
    )
    for column in ("metric", "value", "target", "ok"):
        table.add_column(column)
    for name, (op, target) in TARGETS.items():
        if name in result:
            table.add_row(
                name, _fmt(result[name]), f"{op} {target}", "✓" if _meets(result[name], op, target) else "✗"
            )
    for name in (
        "planned",
        "sent",
        "answered",
        "refused",
        "errors",
        "first_response_p50_s",
        "first_response_p95_s",
        "first_text_p50_s",
        "first_text_p95_s",
        "final_text_p50_s",
        "final_text_p95_s",
        "ratings_given",
        "ratings_by_reaction",
        "ratings_stored",
        "regenerations",
        "regenerations_answered",
        "responses_429",
        "fake_rate_refused",
        "delivered_replies_per_s",
        "engine_replies_per_s",
        "engine_finished_per_s",
        "answer_chars_mean",
        "engine_answer_chars_mean",
        "status_at_end",
        "pending_at_end",
        "stuck_after_exit",
        "duration_s",
        "loadavg",
        "engine_loadavg",
        "timed_out",
        "bot_exit_s",
        "bot_exit_code",
        "log_lines",
        "log_reply_lines",
    ):
        if name in result:
            table.add_row(name, _fmt(result[name]), "", "")
    calls = result["api_calls"]
    table.add_row("api_calls", ", ".join(f"{k} {v}" for k, v in calls.items()), "", "")
    table.add_row("by_place", "; ".join(f"{k}: {v}" for k, v in result["by_place"].items()), "", "")
    for name in ("refusal_texts", "error_texts"):
        for text, count in result[name].items():
            table.add_row(name, f"{count}× {text}", "", "")
    if "engine_failed" in result:
        table.add_row("engine_failed", result["engine_failed"], "", "")
    console.print(table)
    if "drafts_compare" in result:
        console.print(_drafts_table(result["drafts_compare"]))
    console.print(f"bot log: {result['log']}")
