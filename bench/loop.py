"""`lorabot bench loop`: the whole learning loop, offline, on the embedded model, in one command.

1. **Ratings.** The fake Telegram (bench/fakes) starts, the real bot (`python -m lorabot run`) is
   pointed at it with a fresh data directory, and simulated users, each in a private chat of their
   own, ask the training questions (bench/loop_prompts.py), a few at once. A rater
   (bench/raters.py) judges every final answer and the user presses 👍 or 👎 under it; "again" is
   👎 then 🔁, and the new answer is rated too. This goes on until N ratings are given, and the
   bench checks the bot stored every one.
2. **Training.** The ratings are exported as the bot's operators would (`lorabot feedback export`:
   core/feedback_export.py) for KTO and DPO; KTO tunes the served model (training's Python API,
   `--method kto`), then DPO on the 🔁 pairs when there are enough; the tune is exported to GGUF and
   registered in the bot's models file, which the running bot re-reads.
3. **A/B.** A live A/B test of the candidate against the served model, share 0.5 (core/ab.py), is
   started in the bot's database, which the running bot reads within a second; new users ask the
   held-out questions and the same rater rates every answer once (there "again" is a plain 👎: one
   rating per question keeps the ratings independent), until both arms have M ratings. The
   store's ratings give each arm's 👍-rate with its Wilson 95% interval (core.feedback_report's
   `ab_comparison`). Then the held-out perplexity of both GGUFs (training/evaluate/perplexity.py)
   once the bot has stopped.

Every phase is timed; the result is a table or one JSON object, with TARGETS checked.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import LoadAverage, _bot_env, _wait_for
from bench.load_users import Ask, FinishedTurns, Place, TelegramWorld, Tracker, is_status, normalized
from bench.loop_prompts import heldout_questions, train_questions
from bench.raters import Rater, Verdict, load_rater, verdict

TARGETS: dict[str, tuple[str, float]] = {
    "up_rate_gain_points": (">=", 20.0),  # candidate's 👍-rate minus the served model's, in points
    "interval_gap_points": (">", 0.0),  # candidate's lower 95% bound minus the served model's upper one
    "perplexity_change_pct": ("<=", 5.0),  # held-out perplexity, candidate vs served
    "total_s": ("<=", 1200.0),  # the whole run on 2 cores
    "ratings_lost": ("<=", 0),  # given through the platform, not stored by the bot
}
POLL_S = 0.25
START_TIMEOUT_S = 180.0
EXIT_TIMEOUT_S = 60.0
BUTTONS_S = 20.0  # how long a user waits for the 👍 👎 🔁 buttons under a final answer
REGENERATE_S = 300.0  # ... and for a regenerated answer
PATIENCE_S = 600.0  # ... and for an answer
STORED_S = 60.0  # how long the bench waits for the bot to store the last ratings
AB_SHARE = 0.5
AB_POLL_S = 2.0


class LoopError(RuntimeError):
    """The loop cannot go on (the message says why, in one line)."""


@dataclass
class LoopOptions:
    rater: str = "brief"  # brief, listy or FILE.py:FUNCTION
    ratings: int = 500  # ratings given in phase 1 (at most)
    ab_ratings: int = 120  # ratings per arm in phase 3 (at least)
    max_tokens: int = 64  # LORABOT_MAX_NEW_TOKENS of the bot
    users: int = 8  # users asking at once (each question from a new user in a private chat)
    steps: int = 30  # KTO steps
    learning_rate: float = 3e-4
    beta: float = 0.1
    dpo_min_pairs: int = 16  # DPO on the 🔁 pairs when the export has at least this many (0: never)
    dpo_steps: int = 10
    workdir: Path | None = None
    progress: bool = True


@dataclass
class PhaseCounts:
    """What the simulated users did in one phase."""

    questions: int = 0
    answered: int = 0
    not_answered: int = 0  # refused, failed or timed out
    up: int = 0
    down: int = 0
    regenerations: int = 0  # 🔁 pressed
    regenerated: int = 0  # of those, a new answer came
    no_buttons: int = 0  # final answers that never showed rating buttons
    stored: int = 0  # ratings the bot stored in this phase

    @property
    def given(self) -> int:
        return self.up + self.down


@dataclass
class TrainOutcome:
    candidate: str
    gguf: Path
    kto_rows: int
    kto_desirable: int
    kto_undesirable: int
    dpo_pairs: int
    dpo_trained: bool
    kto_train_loss: float | None
    runs: list[str] = field(default_factory=list)


def _log(options: LoopOptions, text: str) -> None:
    if options.progress:
        print(f"[bench loop] {text}", file=sys.stderr, flush=True)


def candidate_name(rater_name: str) -> str:
    """A registry name for the candidate: loop-<rater>, in the characters names allow."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", rater_name.rsplit(".py:", 1)[-1]).strip("-.") or "rater"
    return f"loop-{slug}"[:48]


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set these variables for the bench process (training registers the candidate in the run's
    models file through them), and put back what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Loop:
    """One run: the fake Telegram, one bot process for all three phases, and the users."""

    def __init__(self, options: LoopOptions, rater_name: str, rater: Rater, run_dir: Path) -> None:
        from bench.fakes.telegram import FakeBotAPI

        self.options = options
        self.rater_name = rater_name
        self.rater = rater
        self.run_dir = run_dir
        self.data_dir = run_dir / "data"
        self.train_questions = train_questions()
        self.heldout_questions = heldout_questions()
        self.fake = FakeBotAPI()
        asking = len(self.train_questions) + len(self.heldout_questions)  # one new user per question
        places = [Place("private", f"private-{index}") for index in range(asking)]
        self.world = TelegramWorld(self.fake, places)
        self.places = itertools.count()
        self.turns = FinishedTurns(self.data_dir / "history.sqlite3")
        self.tracker = Tracker(self.world, self.turns)
        self.process: asyncio.subprocess.Process | None = None
        self.log_path = run_dir / "bot.log"
        self.load = LoadAverage()
        self.store: Any = None
        self.failure: BaseException | None = None
        self.reserved = 0  # phase 1: ratings promised by questions in flight and given

    # -- the bot ---------------------------------------------------------------------------------
    def bot_env(self) -> dict[str, str]:
        env = _bot_env(self.world, self.run_dir)
        env.update(
            LORABOT_MAX_NEW_TOKENS=str(self.options.max_tokens),
            LORABOT_PARALLEL=str(max(1, min(self.options.users, 64))),
            LORABOT_RATE_LIMIT_MESSAGES="1000",  # every question comes from a new user anyway
            LORABOT_FEEDBACK="true",
            LORABOT_FEEDBACK_BUTTONS="true",
        )
        return env

    async def start_bot(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self.fake.start()
        with open(self.log_path, "wb") as log:  # noqa: ASYNC230 (creating an empty file)
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "lorabot", "run", cwd=self.run_dir, env=self.bot_env(),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        if not await _wait_for(self.world.connected, START_TIMEOUT_S, self.process):
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise LoopError(f"the bot did not connect to the fake Telegram (log {self.log_path}):\n{tail}")

    async def stop_bot(self) -> int | None:
        process = self.process
        if process is None or process.returncode is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
        return process.returncode

    def bot_alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def open_store(self) -> None:
        from core.history import ConversationStore

        self.store = await ConversationStore.open(f"sqlite:///{self.data_dir / 'history.sqlite3'}")

    # -- users -----------------------------------------------------------------------------------
    async def watch(self, done: asyncio.Event) -> None:
        """Follow the bot's messages and its history database until the users are done."""
        next_db = 0.0
        while not done.is_set():
            changed = False
            if time.monotonic() >= next_db:
                next_db = time.monotonic() + 1.0
                changed = await asyncio.to_thread(self.turns.refresh)
                self.load.sample()
            self.tracker.poll(turns_changed=changed)
            await asyncio.sleep(POLL_S)

    async def crowd(self, user: Callable[[], Any]) -> None:
        """`options.users` users at once, each running `user()` until it returns False; the first
        error (a rater that raised, the bot gone) stops them all."""
        done = asyncio.Event()
        watcher = asyncio.ensure_future(self.watch(done))

        async def one() -> None:
            while self.failure is None and await user():
                pass

        tasks = [asyncio.ensure_future(one()) for _ in range(self.options.users)]
        try:
            for finished in asyncio.as_completed(tasks):
                try:
                    await finished
                except BaseException as error:
                    self.failure = self.failure or error
                    for task in tasks:
                        task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            done.set()
            await watcher
        if self.failure is not None:
            raise self.failure

    async def ask(self, question: str) -> Ask | None:
        """A new user asks `question` in a private chat; the final answer, or None."""
        index = next(self.places)
        if index >= len(self.world.places):
            return None
        ask = await self.world.post(index, question)
        self.tracker.add(ask)
        deadline = ask.sent_at + PATIENCE_S
        while ask.outcome is None and time.monotonic() < deadline:
            if not self.bot_alive():
                code = self.process.returncode if self.process else None
                raise LoopError(f"the bot process exited (code {code}); log {self.log_path}")
            await asyncio.sleep(POLL_S)
        return ask if ask.outcome == "answered" else None

    async def buttons(self, ask: Ask) -> list[str]:
        """The rating buttons under the answer (they follow its text), [] if none came."""
        deadline = time.monotonic() + BUTTONS_S
        while time.monotonic() < deadline:
            found = self.world.buttons(ask)
            if any(":up:" in button for button in found):
                return found
            await asyncio.sleep(POLL_S)
        return []

    async def press(self, ask: Ask, action: str, counts: PhaseCounts) -> bool:
        """Press 👍 ("up"), 👎 ("down") or 🔁 ("again") under the answer."""
        button = next((b for b in await self.buttons(ask) if f":{action}:" in b), None)
        if button is None:
            counts.no_buttons += 1
            return False
        await self.world.press(ask.user, ask, button)
        if action == "up":
            counts.up += 1
        elif action == "down":
            counts.down += 1
        return True

    async def regenerate(self, ask: Ask, counts: PhaseCounts) -> str | None:
        """Press 🔁 and wait for the new final answer on screen (None if none came)."""
        old = normalized(self.world.current_text(ask))
        if not await self.press(ask, "again", counts):
            return None
        counts.regenerations += 1
        deadline = time.monotonic() + REGENERATE_S
        while time.monotonic() < deadline:
            text = self.world.current_text(ask)
            if normalized(text) != old and not is_status(text) and self.turns.matches(ask, text):
                counts.regenerated += 1
                return text
            await asyncio.sleep(POLL_S)
        return None

    def judge(self, question: str, answer: str) -> Verdict:
        return verdict(self.rater, self.rater_name, question, answer)

    # -- phase 1: ratings for training -----------------------------------------------------------
    async def rating_phase(self) -> PhaseCounts:
        counts = PhaseCounts()
        questions = iter(self.train_questions)
        target = self.options.ratings
        last_report = time.monotonic()

        async def user() -> bool:
            nonlocal last_report
            if self.reserved >= target:
                return False
            question = next(questions, None)
            if question is None:
                return False
            self.reserved += 1
            counts.questions += 1
            ask = await self.ask(question)
            if ask is None:
                counts.not_answered += 1
                self.reserved -= 1
                return True
            counts.answered += 1
            await self.rate_for_training(ask, counts)
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                _log(
                    self.options,
                    f"ratings {counts.given}/{target} "
                    f"(👍 {counts.up}, 👎 {counts.down}, 🔁 {counts.regenerations})",
                )
            return True

        await self.crowd(user)
        return counts

    async def rate_for_training(self, ask: Ask, counts: PhaseCounts) -> None:
        """The rater's verdict through the buttons; "again" is 👎, 🔁, and a rating of the new
        answer (its own "again" is a 👎), when the ratings left allow a second one."""
        choice = self.judge(ask.question, ask.text)
        if choice == "again" and self.reserved < self.options.ratings:
            self.reserved += 1
            if await self.press(ask, "down", counts):
                new = await self.regenerate(ask, counts)
                if new is not None:
                    second = self.judge(ask.question, new)
                    if await self.press(ask, "up" if second == "up" else "down", counts):
                        return
            self.reserved -= 1
            return
        if not await self.press(ask, "up" if choice == "up" else "down", counts):
            self.reserved -= 1

    async def until_stored(self, expected: int) -> int:
        """Ratings the bot stored, once it has stored `expected` (or STORED_S passed)."""
        deadline = time.monotonic() + STORED_S
        while True:
            stored = await asyncio.to_thread(self.turns.ratings)
            if stored >= expected or time.monotonic() > deadline:
                return stored
            await asyncio.sleep(0.5)

    # -- phase 2: export and train ---------------------------------------------------------------
    async def export(self) -> dict[str, Any]:
        from core.feedback_export import ExportOptions, export_feedback, write_jsonl
        from core.settings import CoreSettings, load_settings

        settings = load_settings(CoreSettings, "LORABOT_", _env_file=None, data_dir=self.data_dir)
        out: dict[str, Any] = {}
        for fmt in ("kto", "dpo"):
            options = ExportOptions(
                format=fmt, system_prompt=settings.system_prompt, history_turns=settings.history_max_turns
            )
            rows, summary = await export_feedback(self.store, options)
            path = self.run_dir / f"feedback-{fmt}.jsonl"
            write_jsonl(rows, path)
            out[fmt] = (path, summary)
        return out

    def train(self, exported: dict[str, Any]) -> TrainOutcome:
        """KTO on every rating, then DPO on the 🔁 pairs when there are enough; export, register."""
        from core.embedded import EMBEDDED_MODEL_NAME
        from training.config import build_config
        from training.export import export_run
        from training.run import train

        kto_path, kto = exported["kto"]
        dpo_path, dpo = exported["dpo"]
        if kto.rows == 0:
            raise LoopError("the export holds no rated answer: nothing to train on")
        if not (kto.desirable and kto.undesirable):
            side = "👍" if kto.desirable else "👎"
            raise LoopError(
                f"rater {self.rater_name} gave every one of {kto.rows} answers {side}: KTO learns "
                "from the contrast of 👍 and 👎 answers, and there is none (a rater that likes some "
                "answers and not others, or other questions, is needed)"
            )
        name = candidate_name(self.rater_name)
        description = f"bench loop: KTO on {kto.rows} ratings by rater {self.rater_name}"
        options = self.options
        cfg = build_config(
            "tiny-kto", dataset=str(kto_path), output_dir=self.run_dir / "train-kto",
            from_model=EMBEDDED_MODEL_NAME, register_name=name, max_steps=options.steps,
            learning_rate=options.learning_rate, beta=options.beta, eval_fraction=0.0,
            description=description,
        )  # fmt: skip
        result = train(cfg, progress=False)
        exported_run = export_run(cfg.resolved_output_dir, "q4_k_m", name, description)
        gguf = exported_run.quant_gguf or exported_run.f16_gguf
        outcome = TrainOutcome(
            candidate=name, gguf=gguf, kto_rows=kto.rows, kto_desirable=kto.desirable,
            kto_undesirable=kto.undesirable, dpo_pairs=dpo.rows, dpo_trained=False,
            kto_train_loss=result.train_loss, runs=[str(cfg.resolved_output_dir)],
        )  # fmt: skip
        if options.dpo_min_pairs and dpo.rows >= options.dpo_min_pairs:
            dpo_name = f"{name}-dpo"
            dpo_cfg = build_config(
                "tiny-dpo", dataset=str(dpo_path), output_dir=self.run_dir / "train-dpo", from_model=name,
                register_name=dpo_name, max_steps=options.dpo_steps, beta=options.beta, eval_fraction=0.0,
                description=f"{description}, then DPO on {dpo.rows} 🔁 pairs",
            )  # fmt: skip
            train(dpo_cfg, progress=False)
            dpo_export = export_run(dpo_cfg.resolved_output_dir, "q4_k_m", dpo_name, dpo_cfg.description)
            outcome.candidate, outcome.gguf = dpo_name, dpo_export.quant_gguf or dpo_export.f16_gguf
            outcome.dpo_trained = True
            outcome.runs.append(str(dpo_cfg.resolved_output_dir))
        return outcome

    # -- phase 3: the A/B ------------------------------------------------------------------------
    async def ab_phase(self, candidate: str) -> tuple[PhaseCounts, Any]:
        from core import ab
        from core.embedded import EMBEDDED_MODEL_NAME
        from core.feedback_report import ab_comparison

        test, _ = await ab.start(self.store, EMBEDDED_MODEL_NAME, candidate, AB_SHARE)
        await asyncio.sleep(ab.CACHE_S + 0.5)  # the running bot reads the test at most CACHE_S old
        counts = PhaseCounts()
        questions = iter(self.heldout_questions)
        wanted = self.options.ab_ratings
        arm_ratings = {"control": 0, "candidate": 0}
        read_at = 0.0
        lock = asyncio.Lock()

        async def enough() -> bool:
            nonlocal read_at
            async with lock:
                if time.monotonic() - read_at >= AB_POLL_S:
                    read_at = time.monotonic()
                    comparison = await ab_comparison(self.store, test)
                    if comparison is not None:
                        arm_ratings.update(
                            control=comparison.control.ratings, candidate=comparison.candidate.ratings
                        )
            return min(arm_ratings.values()) >= wanted

        async def user() -> bool:
            if await enough():
                return False
            question = next(questions, None)
            if question is None:
                return False
            counts.questions += 1
            ask = await self.ask(question)
            if ask is None:
                counts.not_answered += 1
                return True
            counts.answered += 1
            choice = self.judge(ask.question, ask.text)
            await self.press(ask, "up" if choice == "up" else "down", counts)
            return True

        before = await asyncio.to_thread(self.turns.ratings)
        await self.crowd(user)
        counts.stored = await self.until_stored(before + counts.given) - before
        stopped = await ab.stop(self.store)
        comparison = await ab_comparison(self.store, stopped or test)
        return counts, comparison


# -- the run ---------------------------------------------------------------------------------------
def _points(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _heldout_perplexity(paths: dict[str, Path]) -> dict[str, Any]:
    from training.evaluate.inputs import load_heldout
    from training.evaluate.perplexity import gguf_perplexity

    conversations = load_heldout()
    threads = os.cpu_count() or 2
    return {
        arm: gguf_perplexity(path, conversations, threads=threads, progress=False)
        for arm, path in paths.items()
    }


async def _phases(loop: Loop, result: dict[str, Any], seconds: dict[str, float]) -> TrainOutcome:
    options = loop.options
    started = time.monotonic()
    await loop.start_bot()
    await loop.open_store()
    seconds["bot_start"] = time.monotonic() - started
    _log(
        options,
        f"bot up in {seconds['bot_start']:.0f} s; rating {options.ratings} answers ({loop.rater_name})",
    )

    started = time.monotonic()
    rated = await loop.rating_phase()
    stored = await loop.until_stored(rated.given)
    seconds["ratings"] = time.monotonic() - started
    result.update(
        questions=rated.questions, answered=rated.answered, not_answered=rated.not_answered,
        ratings_given=rated.given, ratings_up=rated.up, ratings_down=rated.down,
        ratings_stored=stored, ratings_lost=max(0, rated.given - stored),
        regenerations=rated.regenerations, regenerations_answered=rated.regenerated,
        answers_without_buttons=rated.no_buttons,
        train_up_rate=rated.up / rated.given if rated.given else None,
    )  # fmt: skip
    _log(
        options,
        f"{stored} ratings stored in {seconds['ratings']:.0f} s (👍 {rated.up}, 👎 {rated.down}); training",
    )

    started = time.monotonic()
    exported = await loop.export()
    with redirect_stdout(sys.stderr):  # the trainers print their logs; stdout is for --json alone
        outcome = await asyncio.to_thread(loop.train, exported)
    seconds["train"] = time.monotonic() - started
    result.update(
        candidate=outcome.candidate, candidate_file=str(outcome.gguf), kto_rows=outcome.kto_rows,
        kto_desirable=outcome.kto_desirable, kto_undesirable=outcome.kto_undesirable,
        dpo_pairs=outcome.dpo_pairs, dpo_trained=outcome.dpo_trained, kto_train_loss=outcome.kto_train_loss,
        train_runs=outcome.runs,
    )  # fmt: skip
    _log(
        options,
        f"{outcome.candidate} trained and registered in {seconds['train']:.0f} s; A/B on held-out questions",
    )

    started = time.monotonic()
    tested, comparison = await loop.ab_phase(outcome.candidate)
    seconds["ab"] = time.monotonic() - started
    result.update(
        ab_questions=tested.questions, ab_answered=tested.answered, ab_not_answered=tested.not_answered,
        ab_ratings_given=tested.given, ab_ratings_stored=tested.stored,
        ab_answers_without_buttons=tested.no_buttons,
        ratings_lost=result["ratings_lost"] + max(0, tested.given - tested.stored),
    )  # fmt: skip
    if comparison is not None:
        result["ab"] = comparison.as_dict()
        control, candidate = comparison.control, comparison.candidate
        result.update(
            served=control.model, served_ratings=control.ratings, served_up_rate=control.up_rate,
            served_interval=list(control.interval) if control.interval else None,
            candidate_ratings=candidate.ratings, candidate_up_rate=candidate.up_rate,
            candidate_interval=list(candidate.interval) if candidate.interval else None,
            ab_conversations={"served": control.conversations, "candidate": candidate.conversations},
            p_value=comparison.p_value, decided=comparison.decided,
        )  # fmt: skip
        if control.up_rate is not None and candidate.up_rate is not None:
            result["up_rate_gain_points"] = _points(candidate.up_rate - control.up_rate)
        if control.interval and candidate.interval:
            result["interval_gap_points"] = _points(candidate.interval[0] - control.interval[1])
    return outcome


async def _run(
    options: LoopOptions, rater_name: str, rater: Rater, run_dir: Path
) -> tuple[Loop, dict[str, Any], dict[str, float], TrainOutcome]:
    loop = Loop(options, rater_name, rater, run_dir)  # the fake's server belongs to this event loop
    result: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    try:
        outcome = await _phases(loop, result, seconds)
    finally:
        result["bot_exit_code"] = await loop.stop_bot()
        if loop.store is not None:
            await loop.store.close()
        loop.turns.close()
        await loop.fake.stop()
    return loop, result, seconds, outcome


def measure(options: LoopOptions) -> dict[str, Any]:
    """One whole loop; the result dict (see TARGETS). Raises RaterError / LoopError / training's
    errors with a one-line message."""
    from core.embedded import EMBEDDED_MODEL_NAME, embedded_model_path

    rater_name, rater = load_rater(options.rater)
    run_dir = Path(tempfile.mkdtemp(prefix="lorabot-loop-", dir=options.workdir))
    (run_dir / "data").mkdir()
    began = time.monotonic()
    env = {
        "LORABOT_DATA_DIR": str(run_dir / "data"),
        "LORABOT_MODELS_FILE": str(run_dir / "data" / "models.toml"),
    }
    with _environment(env):
        loop, result, seconds, outcome = asyncio.run(_run(options, rater_name, rater, run_dir))
        started = time.monotonic()
        _log(options, "held-out perplexity of both models")
        scores = _heldout_perplexity({"served": embedded_model_path(), "candidate": outcome.gguf})
        seconds["perplexity"] = time.monotonic() - started
    served, candidate = scores["served"], scores["candidate"]
    seconds["total"] = time.monotonic() - began
    result = {
        "rater": rater_name,
        "ratings_target": options.ratings,
        "ab_ratings_target": options.ab_ratings,
        "max_tokens": options.max_tokens,
        "users": options.users,
        "kto_steps": options.steps,
        "learning_rate": options.learning_rate,
        "model": EMBEDDED_MODEL_NAME,
        **result,
        "served_perplexity": served.perplexity,
        "candidate_perplexity": candidate.perplexity,
        "perplexity_change_pct": 100.0 * (candidate.perplexity / served.perplexity - 1.0),
        "heldout_tokens": served.tokens,
        "seconds": {name: round(value, 1) for name, value in seconds.items()},
        "total_s": seconds["total"],
        "loadavg": loop.load.mean,
        "cpus": os.cpu_count(),
        "run_dir": str(run_dir),
        "log": str(loop.log_path),
    }
    result["targets"] = {name: meets(result.get(name), *target) for name, target in TARGETS.items()}
    result["targets_met"] = all(result["targets"].values())
    return result


def meets(value: object, op: str, target: float) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    number = float(value)  # type: ignore[arg-type]
    return {">=": number >= target, ">": number > target, "<=": number <= target}[op]


# -- output ------------------------------------------------------------------------------------------
def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if 0 < abs(value) < 1e-3:  # a p-value
            return f"{value:.2e}"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _rate(rate: object, interval: object) -> str:
    if not isinstance(rate, float) or not isinstance(interval, list):
        return "-"
    return f"{100 * rate:.1f}% ({100 * interval[0]:.1f}–{100 * interval[1]:.1f}%)"


def _rounded(value: Any) -> Any:
    if isinstance(value, float):  # 4 significant digits: a p-value of 6e-19 stays 6e-19, not 0.0
        return float(f"{value:.4g}") if abs(value) < 1 else round(value, 4)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def main(options: LoopOptions, *, json_output: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    result = measure(options)
    if json_output:
        print(json.dumps(_rounded(result), ensure_ascii=False))
        return
    console = Console()
    table = Table(
        title=f"lorabot bench loop — rater {result['rater']}, {result['ratings_given']} ratings, "
        f"{result['model']} → {result['candidate']}"
    )
    for column in ("metric", "value", "target", "ok"):
        table.add_column(column)
    for name, (op, target) in TARGETS.items():
        ok = result["targets"][name]
        table.add_row(name, _fmt(result.get(name)), f"{op} {target}", "✓" if ok else "✗")
    table.add_row(
        "served 👍-rate (95% CI)", _rate(result.get("served_up_rate"), result.get("served_interval")), "", ""
    )
    table.add_row(
        "candidate 👍-rate (95% CI)",
        _rate(result.get("candidate_up_rate"), result.get("candidate_interval")),
        "",
        "",
    )
    for name in (
        "served_ratings", "candidate_ratings", "p_value", "decided", "train_up_rate", "ratings_stored",
        "regenerations", "kto_desirable", "kto_undesirable", "dpo_pairs", "dpo_trained",
        "served_perplexity", "candidate_perplexity", "loadavg",
    ):  # fmt: skip
        table.add_row(name, _fmt(result.get(name)), "", "")
    table.add_row("seconds", ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()), "", "")
    console.print(table)
    console.print(f"run folder: {result['run_dir']}  (bot log: {result['log']})")
