"""The promotion gate: is a candidate model good enough to take over a served model's name?

`run_gate` runs `lorabot eval`'s side-by-side evaluation (training/evaluate/runner.py) on
[NAME, CANDIDATE] — NAME first, so it is the baseline — and `decide` turns the report into a
verdict with one check per figure, each held to a margin:

- held-out perplexity: the candidate's may be at most NAME's × (1 + max_ppl_increase);
- judge (only when one ran): the candidate's win rate against NAME, positions swapped, at least
  min_judge_win (a tie counts half, so two equal models score 50%);
- speed: the candidate's median decode tokens/s at least NAME's × (1 − max_slowdown).

A figure that could not be measured (perplexity of a remote model, no judge asked for, answers too
short to time) is shown as such and blocks nothing. `decide` is a pure function of the report, so
the margins are tested on hand-written reports; lorabot/promote.py prints the verdict and promotes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from core.settings import CoreSettings
from training.evaluate.errors import EvalError
from training.evaluate.runner import EvalOptions, run_eval


@dataclass(frozen=True)
class Margins:
    """How much worse than NAME a candidate may be (fractions: 0.05 is 5%)."""

    max_ppl_increase: float = 0.05
    min_judge_win: float = 0.4
    max_slowdown: float = 0.2

    def __post_init__(self) -> None:
        if not (self.max_ppl_increase >= 0 and math.isfinite(self.max_ppl_increase)):
            raise EvalError(f"--max-ppl-increase must be 0 or more (a fraction), not {self.max_ppl_increase}")
        if not 0 <= self.min_judge_win <= 1:
            raise EvalError(f"--min-judge-win must be between 0 and 1, not {self.min_judge_win}")
        if not 0 <= self.max_slowdown <= 1:
            raise EvalError(
                f"--max-slowdown must be between 0 and 1 (1: speed not checked), not {self.max_slowdown}"
            )


@dataclass(frozen=True)
class Check:
    """One figure of the gate: NAME's value, the candidate's, the bound it is held to, the verdict
    (None: not measured, blocks nothing) and a sentence saying why."""

    figure: str
    baseline: float | None
    candidate: float | None
    bound: float | None
    passed: bool | None
    why: str


@dataclass(frozen=True)
class GateDecision:
    baseline: str
    candidate: str
    checks: list[Check]

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.passed is False]

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def reason(self) -> str:
        """The failed checks' sentences, or what passed."""
        checks = self.failed or [check for check in self.checks if check.passed]
        return "; ".join(check.why for check in checks) or "nothing could be measured"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def perplexity_check(base: dict[str, Any], cand: dict[str, Any], margin: float) -> Check:
    figure = "held-out perplexity"
    b, c = base.get("perplexity"), cand.get("perplexity")
    if b is None or c is None:
        why = "held-out perplexity not measured (a remote model has no GGUF here)"
        return Check(figure, b, c, None, None, why)
    if not _finite(b):  # a broken baseline: any candidate that scores at all is no worse
        return Check(figure, b, c, None, _finite(c), f"held-out perplexity {c:.3f} vs {b}")
    bound = b * (1 + margin)
    if not _finite(c):
        why = f"held-out perplexity is {c} (not finite) against {b:.3f}: broken weights"
        return Check(figure, b, c, bound, False, why)
    figures = f"held-out perplexity {c:.3f} vs {b:.3f} for {base['name']} ({c / b - 1:+.1%})"
    if c <= bound:
        return Check(figure, b, c, bound, True, f"{figures}, within the allowed {margin:+.0%}")
    return Check(figure, b, c, bound, False, f"{figures}, more than the allowed {margin:+.0%}")


def judge_check(judged: dict[str, Any] | None, candidate: str, minimum: float) -> Check:
    figure = "judge win rate"
    pair = next((p for p in (judged or {}).get("pairs", []) if p["model"] == candidate), None)
    if pair is None:
        return Check(figure, None, None, minimum, None, "no judge ran (give --judge NAME or --judge-url)")
    rate = float(pair["win_rate"])
    figures = (
        f"judge win rate {rate:.0%} against {pair['other']} "
        f"({pair['wins']} wins, {pair['losses']} losses, {pair['ties']} ties of {pair['n']} prompts)"
    )
    if rate >= minimum:
        return Check(figure, None, rate, minimum, True, f"{figures}, at least {minimum:.0%}")
    why = f"{figures}, below the required {minimum:.0%} (by {minimum - rate:.0%})"
    return Check(figure, None, rate, minimum, False, why)


def speed_check(base: dict[str, Any], cand: dict[str, Any], margin: float) -> Check:
    figure = "decode tokens/s"
    b, c = base["decode_tok_s"]["median"], cand["decode_tok_s"]["median"]
    if not b or c is None:
        why = "decode speed not measured (answers too short: raise --max-tokens)"
        return Check(figure, b, c, None, None, why)
    bound = b * (1 - margin)
    figures = f"decodes at {c:.1f} tok/s vs {b:.1f} for {base['name']} ({c / b - 1:+.0%})"
    if c >= bound:
        return Check(figure, b, c, bound, True, f"{figures}, within the allowed {-margin or 0.0:+.0%}")
    return Check(figure, b, c, bound, False, f"{figures}, slower than the allowed {-margin or 0.0:+.0%}")


def decide(report: dict[str, Any], margins: Margins) -> GateDecision:
    """The verdict on a `run_eval` report of [NAME, CANDIDATE] (the first model is NAME)."""
    models = report["models"]
    if len(models) != 2:
        raise EvalError(f"the gate compares two models, the report has {len(models)}")
    base, cand = models
    return GateDecision(
        baseline=base["name"],
        candidate=cand["name"],
        checks=[
            perplexity_check(base, cand, margins.max_ppl_increase),
            judge_check(report.get("judge"), cand["name"], margins.min_judge_win),
            speed_check(base, cand, margins.max_slowdown),
        ],
    )


def run_gate(
    settings: CoreSettings, candidate: str, replace: str, margins: Margins, options: EvalOptions
) -> tuple[GateDecision, dict[str, Any]]:
    """Evaluate [replace, candidate] with `options` (its `models` is ignored), then decide."""
    if candidate == replace:
        raise EvalError(
            f"{candidate!r} cannot be compared with itself: give a candidate and the model it replaces"
        )
    report = run_eval(settings, dataclasses.replace(options, models=[replace, candidate]))
    return decide(report, margins), report
