"""How each model file is rated: 👍-rate with a 95% interval and how often answers are regenerated.

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

from core.errors import StoreUnavailable
from core.schema import answer_versions, ratings, turns

if TYPE_CHECKING:
    from core.history import ConversationStore

log = logging.getLogger(__name__)
Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
STATS_LINES = 5  # /stats shows at most this many model files


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
    if not report:
        return []
    lines = ["Feedback per model file:", *(rating_line(row) for row in report[:limit])]
    if len(report) > limit:
        lines.append(f"(and {len(report) - limit} more: lorabot feedback report)")
    return lines
