"""Median and spread of a handful of measurements (few prompts: min/max say more than a stdev)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Spread:
    median: float | None
    low: float | None
    high: float | None
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        values = [float(v) for v in values]
        if not values:
            return cls(None, None, None, [])
        return cls(statistics.median(values), min(values), max(values), values)
