"""Speed and cost of one model as a bot sees them: through ChatService, with the bot's settings.

Load time and resident memory are measured in this process around the core's own model load
(the pool's lazy load, then one warm-up reply so the mmapped weights are paged in). Time to first
token and decode tokens/s come from the lead's engine benchmark helpers (bench/engine.py), so
`lorabot eval` and `lorabot bench engine` measure the same way. Generation is greedy so answers
are reproducible and the models are compared on the same footing.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from core.registry import ModelEntry, ModelRegistry
from core.service import ChatService
from core.settings import CoreSettings
from training.evaluate.stats import Spread
from training.evaluate.timing import decode_rate, timed_reply


@dataclass
class Speed:
    file_size_mib: float
    load_s: float
    rss_after_load_mib: float  # whole process, after load + one warm-up reply
    rss_model_mib: float  # what loading this model added to the process
    ttft_s: Spread
    decode_tok_s: Spread
    answers: list[str] = field(default_factory=list)
    per_prompt: list[dict[str, float | int | None]] = field(
        default_factory=list
    )  # ttft_s, decode_tok_s, tokens
    empty_answers: int = 0


def eval_settings(settings: CoreSettings, model: str, data_dir: Path, max_new_tokens: int) -> CoreSettings:
    """The bot's settings, except what a fair, repeatable measurement needs."""
    return settings.model_copy(
        update={
            "data_dir": data_dir,
            "models_file": settings.resolved_models_file,
            "default_model": model,
            "temperature": 0.0,
            "max_new_tokens": max_new_tokens,
            "rate_limit_messages": 1_000_000,
        }
    )


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


async def measure_speed(
    settings: CoreSettings,
    entry: ModelEntry,
    prompts: list[str],
    *,
    max_new_tokens: int,
    progress: bool = True,
) -> Speed:
    """Load `entry` through the core, answer every prompt in a fresh conversation, time it all."""
    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory(prefix="lorabot-eval-") as data_dir:
        service = ChatService(
            eval_settings(settings, entry.name, Path(data_dir), max_new_tokens),
            registry=ModelRegistry(settings.resolved_models_file),
        )
        await service.start()
        try:
            rss_before = _rss_mib()
            started = time.perf_counter()
            async with service.pool.use(entry.name):
                pass
            load_s = time.perf_counter() - started
            await timed_reply(service, "warmup", "eval", "Hello!")
            rss_after = _rss_mib()
            ttfts, rates, answers, per_prompt, empty = [], [], [], [], 0
            for index, prompt in enumerate(
                tqdm(prompts, desc=f"answers {entry.name}", disable=not progress, leave=False)
            ):
                try:
                    timed = await timed_reply(service, f"eval-{index}", "eval", prompt)
                    ttft, stamps, done = timed.ttft_s, timed.stamps, timed.done
                except AssertionError:  # bench's helper asserts a non-empty reply
                    answers.append("")
                    per_prompt.append({"ttft_s": None, "decode_tok_s": None, "tokens": 0})
                    empty += 1
                    continue
                rate = decode_rate(stamps) or None  # needs 3+ pieces
                ttfts.append(ttft)
                if rate:
                    rates.append(rate)
                answers.append(done.text)
                per_prompt.append({"ttft_s": ttft, "decode_tok_s": rate, "tokens": done.completion_tokens})
        finally:
            await service.close()
    return Speed(
        file_size_mib=(entry.size_bytes or 0) / 2**20,
        load_s=load_s,
        rss_after_load_mib=rss_after,
        rss_model_mib=max(0.0, rss_after - rss_before),
        ttft_s=Spread.of(ttfts),
        decode_tok_s=Spread.of(rates),
        answers=answers,
        per_prompt=per_prompt,
        empty_answers=empty,
    )
