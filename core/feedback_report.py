"""How each model file is rated: 👍-rate with a 95% interval and how often answers are regenerated;
and the live A/B's two arms compared (`ab_comparison`: Wilson intervals, a two-proportion z-test).

One GROUP BY over the history database (core/schema.py v4), so `/stats` can afford it on every call
and `lorabot feedback report` shows the same rows. Grouped by the model name *and* the model file's
identity: a retrained file under the same name starts from no ratings. Answers stored before the
model was recorded (schema < 4) have no model and are left out: they can't be credited to a file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from core import ab
from core.errors import StoreUnavailable
from core.schema import answer_versions, ratings, turns

if TYPE_CHECKING:
    from core.history import ConversationStore

log = logging.getLogger(__name__)
Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
STATS_LINES = 5  # /stats shows at most this many model files
AB_MIN_RATINGS = 30  # per arm, before an A/B difference is called decided (whatever the p-value)
AB_ALPHA = 0.05  # significance level of the A/B's two-sided test


@dataclass(frozen=True)
class ModelRating:
    """One model file's feedback figures."""

    model: str
    model_file: str | None
    answers_rated: int  # distinct answers (turn, version) with at least one rating
    up: int
    down: int
    answered_turns: int  # turns this file wrote an answer for (the current one or a replaced one)
    regenerated_turns: int  # of those, turns where an answer of this file was replaced by a 🔁

    @property
    def ratings(self) -> int:
        return self.up + self.down

    @property
    def up_rate(self) -> float | None:
        return self.up / self.ratings if self.ratings else None

    @property
    def up_interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.up, self.ratings)

    @property
    def regenerate_rate(self) -> float | None:
        return self.regenerated_turns / self.answered_turns if self.answered_turns else None

    def as_dict(self) -> dict[str, object]:
        """For `lorabot feedback report --json`: the counts and the derived rates."""
        interval = self.up_interval
        return asdict(self) | {
            "ratings": self.ratings,
            "up_rate": self.up_rate,
            "up_rate_low": interval[0] if interval else None,
            "up_rate_high": interval[1] if interval else None,
            "regenerate_rate": self.regenerate_rate,
        }


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion: unlike p ± z·√(p(1−p)/n) it stays inside [0, 1] and
    does not collapse to a point at 0 or n successes, which matters with a few dozen ratings."""
    if trials <= 0:
        return None
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def _report_query() -> sa.Select[Any]:
    """Answers written (current and replaced) and rated answers, stacked, then grouped per file."""
    nothing, one = sa.literal_column("0", sa.Integer), sa.literal_column("1", sa.Integer)
    written = sa.select(
        turns.c.model,
        turns.c.model_file,
        turns.c.id.label("turn_id"),
        nothing.label("replaced"),
        nothing.label("up"),
        nothing.label("down"),
        nothing.label("rated"),
    ).where(turns.c.state == "answered", turns.c.model.is_not(None))
    replaced = sa.select(
        answer_versions.c.model,
        answer_versions.c.model_file,
        answer_versions.c.turn_id,
        one,
        nothing,
        nothing,
        nothing,
    ).where(answer_versions.c.model.is_not(None))
    rated = (
        sa.select(
            ratings.c.model,
            ratings.c.model_file,
            ratings.c.turn_id,
            nothing,
            sa.func.sum(sa.case((ratings.c.value > 0, 1), else_=0)),
            sa.func.sum(sa.case((ratings.c.value < 0, 1), else_=0)),
            one,
        )
        .where(ratings.c.model.is_not(None))
        .group_by(ratings.c.model, ratings.c.model_file, ratings.c.turn_id, ratings.c.version)
    )
    rows = sa.union_all(written, replaced, rated).subquery()
    answers = sa.case((rows.c.rated == 0, rows.c.turn_id))
    return (
        sa.select(
            rows.c.model,
            rows.c.model_file,
            sa.func.sum(rows.c.rated),
            sa.func.sum(rows.c.up),
            sa.func.sum(rows.c.down),
            sa.func.count(sa.distinct(answers)),
            sa.func.count(sa.distinct(sa.case((rows.c.replaced == 1, rows.c.turn_id)))),
        )
        .group_by(rows.c.model, rows.c.model_file)
        .order_by(sa.func.sum(rows.c.up + rows.c.down).desc(), rows.c.model, rows.c.model_file)
    )


async def model_report(store: ConversationStore) -> list[ModelRating]:
    """Every model file's figures, the most rated first (one query)."""

    async def work(db: AsyncConnection) -> list[ModelRating]:
        result = await db.execute(_report_query())
        return [
            ModelRating(str(model), file, int(rated), int(up), int(down), int(answered), int(regenerated))
            for model, file, rated, up, down, answered, regenerated in result.all()
        ]

    return await store.read(work, "read the feedback report")


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def short_file(model_file: str | None) -> str:
    """'gguf:ab12…': enough of the identity to tell two files apart on a chat screen."""
    if not model_file:
        return "file unknown"
    kind, _, digest = model_file.partition(":")
    return f"{kind}:{digest[:4]}…" if digest and kind == "gguf" else model_file


def rating_line(row: ModelRating) -> str:
    """'👍 82% (74–88%, 120 ratings), 🔁 6% — smollm2-135m gguf:ab12…'"""
    interval = row.up_interval
    if row.up_rate is None or interval is None:
        rated = "👍 no ratings yet"
    else:
        low, high = interval
        count = f"{row.ratings} rating{'s' if row.ratings != 1 else ''}"
        rated = f"👍 {_percent(row.up_rate)} ({100 * low:.0f}–{_percent(high)}, {count})"
    regenerated = f"🔁 {_percent(row.regenerate_rate)}" if row.regenerate_rate is not None else "🔁 –"
    return f"{rated}, {regenerated} — {row.model} {short_file(row.model_file)}"


async def stats_lines(store: ConversationStore | None, limit: int = STATS_LINES) -> list[str]:
    """The report's first `limit` model files for /stats; nothing when the store can't be read
    (the rest of /stats is still worth showing)."""
    if store is None:
        return []
    try:
        report = await model_report(store)
    except StoreUnavailable:
        return []
    lines = ["Feedback per model file:", *(rating_line(row) for row in report[:limit])] if report else []
    if len(report) > limit:
        lines.append(f"(and {len(report) - limit} more: lorabot feedback report)")
    try:  # a running test only: its arms are one indexed read, its ratings one join
        if (test := await ab.running_test(store)) is not None and (
            comparison := await ab_comparison(store, test)
        ):
            lines += ab_lines(comparison)
    except StoreUnavailable:
        pass
    return lines


# -- the live A/B ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AbArmResult:
    """One arm's figures: the ratings of answers its model wrote in the conversations of that arm."""

    arm: ab.Arm
    model: str
    model_files: tuple[str, ...]  # the files that answered (most rated first): the name may be re-pointed
    conversations: int  # conversations routed to this arm so far
    up: int
    down: int

    @property
    def ratings(self) -> int:
        return self.up + self.down

    @property
    def up_rate(self) -> float | None:
        return self.up / self.ratings if self.ratings else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.up, self.ratings)

    def as_dict(self) -> dict[str, object]:
        interval = self.interval
        return asdict(self) | {
            "model_files": list(self.model_files),
            "ratings": self.ratings,
            "up_rate": self.up_rate,
            "up_rate_low": interval[0] if interval else None,
            "up_rate_high": interval[1] if interval else None,
        }


@dataclass(frozen=True)
class AbComparison:
    """The A/B's verdict: is the candidate's 👍-rate different from the served model's?"""

    test: ab.AbTest
    control: AbArmResult  # NAME
    candidate: AbArmResult
    difference: float | None  # candidate's 👍-rate minus control's
    z: float | None
    p_value: float | None  # two-sided, pooled two-proportion z-test; None until both arms have ratings
    decided: bool
    winner: str | None  # the model with the higher 👍-rate, once decided
    reason: str  # why it is (not yet) decided, in one sentence
    min_ratings: int
    alpha: float

    def as_dict(self) -> dict[str, object]:
        return {
            "test": self.test.as_dict(),
            "control": self.control.as_dict(),
            "candidate": self.candidate.as_dict(),
            "difference": self.difference,
            "z": self.z,
            "p_value": self.p_value,
            "decided": self.decided,
            "winner": self.winner,
            "reason": self.reason,
            "min_ratings": self.min_ratings,
            "alpha": self.alpha,
        }


def two_proportion_z(up_a: int, n_a: int, up_b: int, n_b: int) -> tuple[float, float] | None:
    """(z, two-sided p-value) of the pooled two-proportion z-test of b against a; None when an arm
    has no ratings. Both arms all 👍 (or all 👎) is no evidence of a difference: z 0, p 1."""
    if n_a <= 0 or n_b <= 0:
        return None
    pooled = (up_a + up_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (up_b / n_b - up_a / n_a) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def _ab_query(test: ab.AbTest) -> sa.Select[Any]:
    """Ratings of answers the test's two models wrote in turns asked while it ran, per conversation
    and model file (the conversation is matched to its arm afterwards: arms are keyed by a hash)."""
    asked = [turns.c.created_at >= test.started_at]
    if test.stopped_at is not None:
        asked.append(turns.c.created_at <= test.stopped_at)
    return (
        sa.select(
            turns.c.conversation_id,
            ratings.c.model,
            ratings.c.model_file,
            sa.func.sum(sa.case((ratings.c.value > 0, 1), else_=0)),
            sa.func.sum(sa.case((ratings.c.value < 0, 1), else_=0)),
        )
        .join(turns, turns.c.id == ratings.c.turn_id)
        .where(ratings.c.model.in_([test.name, test.candidate]), *asked)
        .group_by(turns.c.conversation_id, ratings.c.model, ratings.c.model_file)
    )


async def ab_comparison(
    store: ConversationStore,
    test: ab.AbTest | None = None,
    *,
    min_ratings: int = AB_MIN_RATINGS,
    alpha: float = AB_ALPHA,
) -> AbComparison | None:
    """Compare the arms of `test` (default: the running test, else the last one stopped); None
    when there has never been one. A rating counts for an arm when the answer was asked while the
    test ran, in a conversation routed to that arm, and written by that arm's model (a conversation
    that later picked another model with /model leaves its later answers out).

    Decided means p < `alpha` and at least `min_ratings` ratings in each arm: the z-test's normal
    approximation is poor below that, and a few early ratings decide nothing."""
    test = test or await ab.latest_test(store)
    if test is None:
        return None
    salt = await ab.salt(store)
    arms = await ab.arms_by_key(store, test)
    counts = await ab.arm_counts(store, test)

    async def work(db: AsyncConnection) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in (await db.execute(_ab_query(test))).all()]

    rows = await store.read(work, "read the A/B ratings")
    up: dict[ab.Arm, int] = {"control": 0, "candidate": 0}
    down: dict[ab.Arm, int] = {"control": 0, "candidate": 0}
    files: dict[ab.Arm, dict[str, int]] = {"control": {}, "candidate": {}}
    keys: dict[str, str] = {}
    for conversation, model, model_file, ups, downs in rows:
        key = keys.get(conversation) or keys.setdefault(conversation, ab.conversation_key(salt, conversation))
        arm = arms.get(key)
        if arm is None or test.model_of(arm) != model:
            continue
        up[arm] += int(ups)
        down[arm] += int(downs)
        name = model_file or "file unknown"
        files[arm][name] = files[arm].get(name, 0) + int(ups) + int(downs)

    def result(arm: ab.Arm) -> AbArmResult:
        ordered = tuple(sorted(files[arm], key=lambda f: -files[arm][f]))
        return AbArmResult(arm, test.model_of(arm), ordered, counts[arm], up[arm], down[arm])

    control, candidate = result("control"), result("candidate")
    return _verdict(test, control, candidate, min_ratings, alpha)


def _verdict(
    test: ab.AbTest, control: AbArmResult, candidate: AbArmResult, min_ratings: int, alpha: float
) -> AbComparison:
    tested = two_proportion_z(control.up, control.ratings, candidate.up, candidate.ratings)
    z, p_value = tested if tested else (None, None)
    difference = (
        candidate.up_rate - control.up_rate
        if candidate.up_rate is not None and control.up_rate is not None
        else None
    )
    short = [arm for arm in (control, candidate) if arm.ratings < min_ratings]
    decided = p_value is not None and p_value < alpha and not short
    winner = None
    if p_value is None:
        reason = "not yet: " + " and ".join(
            f"{arm.model} has no ratings" for arm in (control, candidate) if not arm.ratings
        )
    elif short:
        needs = ", ".join(f"{arm.model} has {arm.ratings}" for arm in short)
        reason = f"not yet: each arm needs ≥ {min_ratings} ratings ({needs}); p = {p_value:.3g} so far"
    elif p_value >= alpha:
        reason = f"not yet: p = {p_value:.3g} ≥ {alpha:g}, the difference may be chance"
    else:
        better = candidate if (difference or 0) > 0 else control
        winner = better.model
        reason = (
            f"decided: {better.model}'s 👍-rate is higher (p = {p_value:.3g} < {alpha:g}, "
            f"{control.ratings} and {candidate.ratings} ratings, ≥ {min_ratings} per arm)"
        )
    return AbComparison(
        test, control, candidate, difference, z, p_value, decided, winner, reason, min_ratings, alpha
    )


def _arm_text(arm: AbArmResult) -> str:
    interval = arm.interval
    if arm.up_rate is None or interval is None:
        return f"{arm.model} no ratings yet"
    low, high = interval
    return f"{arm.model} 👍 {_percent(arm.up_rate)} ({100 * low:.0f}–{_percent(high)}, n={arm.ratings})"


def ab_lines(comparison: AbComparison) -> list[str]:
    """The A/B in two lines (/stats, the report's footer)."""
    test = comparison.test
    state = "running" if test.running else "stopped"
    return [
        f"A/B ({state}): {test.candidate} gets {_percent(test.share)} of {test.name}'s conversations — "
        f"{_arm_text(comparison.control)} vs {_arm_text(comparison.candidate)}",
        comparison.reason,
    ]
