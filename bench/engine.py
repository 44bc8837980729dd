"""`lorabot bench engine`: the core against llama-cpp-python called directly, same model,
prompts and greedy settings, all measured in one run.

- core_vs_raw: decode tokens/s through ChatService ÷ `Llama.create_completion(stream=True)`.
- ttft_turn10_vs_turn1: time to first token at turn 10 of a conversation ÷ at turn 1.
- ttft_interleaved_vs_turn1: the same with N conversations taking turns round-robin.
- concurrency_ratio: aggregate tokens/s of N simultaneous requests ÷ one request alone.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from core.timing import decode_rate, timed_reply
from core.worker import compute_thread
from core.registry import ModelRegistry
from core.service import ChatService
from core.settings import CoreSettings

QUESTIONS = [
    "Explain recursion to a 5 year old.",
    "Write a short story about a robot learning to paint.",
    "What are three tips for learning a new language?",
    "Describe how a bicycle works, step by step.",
    "Why is the sky blue? Give a detailed answer.",
    "List some fun facts about octopuses.",
    "How do I make a simple tomato pasta sauce?",
    "What is the difference between weather and climate?",
    "Give me a plan for a productive Saturday.",
    "Explain what a neural network is in plain words.",
]
TARGETS = {
    "core_vs_raw": (">=", 0.95),
    "ttft_turn10_vs_turn1": ("<=", 1.5),
    "ttft_interleaved_vs_turn1": ("<=", 2.0),
    "concurrency_ratio": (">=", 0.9),
}


class RawLlama:
    """llama-cpp-python on its own, fed the same prompt tokens the core builds."""

    def __init__(self, settings: CoreSettings, model_path: Path, max_tokens: int) -> None:
        import llama_cpp

        from core.engines.llama import LlamaEngine
        from core.registry import ModelEntry

        self.max_tokens = max_tokens
        self.system = settings.system_prompt
        self.template = LlamaEngine.load(ModelEntry(name="raw", path=model_path), settings.model_copy(update={"kv_slots": 1}))
        self.llm = llama_cpp.Llama(
            str(model_path), n_ctx=settings.context_length, n_threads=settings.resolved_threads, verbose=False
        )

    def decode_tok_s(self, question: str) -> float:
        prompt = self.template.prompt_tokens(
            [{"role": "system", "content": self.system}, {"role": "user", "content": question}]
        )
        self.llm.reset()
        stamps = [time.perf_counter() for _ in self.llm.create_completion(prompt, max_tokens=self.max_tokens, temperature=0.0, stream=True)]
        return decode_rate(stamps)

    def cold_ttft(self, turns: int) -> float:
        """First token after reading a `turns`-turn history from scratch (no warm KV cache)."""
        history = [{"role": "system", "content": self.system}]
        for turn in range(turns):
            history += [
                {"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]},
                {"role": "assistant", "content": "word " * self.max_tokens},
            ]
        self.llm.reset()
        started = time.perf_counter()
        next(iter(self.llm.create_completion(self.template.prompt_tokens(history[:-1]), max_tokens=1, temperature=0.0, stream=True)))
        return time.perf_counter() - started

    def close(self) -> None:
        self.llm.close()
        self.template.close()


async def measure(
    settings: CoreSettings, model_path: Path, turns: int, conversations: int, max_tokens: int, repeats: int = 3
) -> dict[str, float]:
    """Every comparison alternates its two sides so a busy machine slows both alike.

    The raw side runs on the core's compute thread too: llama.cpp calls from a second thread
    would start a second OpenMP team, which slows both sides (see core/worker.py).
    """
    compute = compute_thread()
    raw = await compute.call(RawLlama, settings, model_path, max_tokens)
    service = ChatService(settings)
    await service.start()
    try:
        await timed_reply(service, "warmup", "warmup", "Hello!")  # loads the model
        await compute.call(raw.decode_tok_s, "Hello!")
        raw_rates, core_rates = [], []
        for index, question in enumerate(QUESTIONS):
            raw_rates.append(await compute.call(raw.decode_tok_s, question))
            core_rates.append((await timed_reply(service, f"rate-{index}", f"rate-{index}", question)).decode_tok_s)

        # One conversation at a time, `turns` turns each (`repeats` conversations, for medians).
        single = [
            [(await timed_reply(service, f"solo-{r}", "solo", QUESTIONS[(t + r) % len(QUESTIONS)])).ttft_s for t in range(turns)]
            for r in range(repeats)
        ]

        # `conversations` conversations taking turns round-robin.
        interleaved: list[list[float]] = [[] for _ in range(conversations)]
        for turn in range(turns):
            for conv in range(conversations):
                question = QUESTIONS[(turn + conv) % len(QUESTIONS)]
                interleaved[conv].append((await timed_reply(service, f"rr-{conv}", f"rr-{conv}", question)).ttft_s)
        cold = await compute.call(raw.cold_ttft, turns)

        # Concurrency: one request alone, then `conversations` at once, `repeats` times.
        singles, aggregates = [], []
        for repeat in range(repeats):
            started = time.perf_counter()
            done = (await timed_reply(service, f"alone-{repeat}", f"alone-{repeat}", QUESTIONS[repeat])).done
            singles.append(done.completion_tokens / (time.perf_counter() - started))
            started = time.perf_counter()
            results = await asyncio.gather(
                *(timed_reply(service, f"burst-{repeat}-{i}", f"burst-{i}", QUESTIONS[repeat]) for i in range(conversations))
            )
            aggregates.append(sum(reply.done.completion_tokens for reply in results) / (time.perf_counter() - started))
    finally:
        await service.close()
        await compute.call(raw.close)
    return {
        "raw_tok_s": statistics.median(raw_rates),
        "core_tok_s": statistics.median(core_rates),
        "core_vs_raw": statistics.median(c / r for c, r in zip(core_rates, raw_rates) if r > 0),
        "ttft_turn1_s": statistics.median(row[0] for row in single),
        "ttft_turn10_s": statistics.median(row[-1] for row in single),
        "ttft_interleaved_turn1_s": statistics.median(row[0] for row in interleaved),
        "ttft_interleaved_turn10_s": statistics.median(row[-1] for row in interleaved),
        "raw_cold_ttft_turn10_s": cold,
        "single_stream_tok_s": statistics.median(singles),
        "aggregate_tok_s_8_concurrent": statistics.median(aggregates),
        "concurrency_ratio": statistics.median(a / s for a, s in zip(aggregates, singles)),
    }


def run(settings: CoreSettings, *, turns: int, conversations: int, max_tokens: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as data_dir:
        bench_settings = settings.model_copy(
            update={
                "data_dir": Path(data_dir),
                "models_file": settings.resolved_models_file,
                "temperature": 0.0,
                "max_new_tokens": max_tokens,
                "rate_limit_messages": 10_000,
                "queue_max": max(settings.queue_max, conversations * 2),
                "kv_slots": max(settings.kv_slots, conversations + 1),
            }
        )
        entry = ModelRegistry(bench_settings.resolved_models_file).get(bench_settings.default_model)
        measured = asyncio.run(measure(bench_settings, entry.path, turns, conversations, max_tokens))
    result: dict[str, object] = {
        "model": entry.name,
        "threads": bench_settings.resolved_threads,
        "max_tokens": max_tokens,
        "turns": turns,
        "conversations": conversations,
        **measured,
        "ttft_turn10_vs_turn1": measured["ttft_turn10_s"] / measured["ttft_turn1_s"],
        "ttft_interleaved_vs_turn1": measured["ttft_interleaved_turn10_s"] / measured["ttft_interleaved_turn1_s"],
    }
    result["targets_met"] = all(_meets(result[name], *target) for name, target in TARGETS.items())
    return result


def _meets(value: object, op: str, target: float) -> bool:
    return float(value) >= target if op == ">=" else float(value) <= target  # type: ignore[arg-type]


def main(settings: CoreSettings, *, json_output: bool, turns: int, conversations: int, max_tokens: int) -> None:
    result = run(settings, turns=turns, conversations=conversations, max_tokens=max_tokens)
    if json_output:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
        return
    console = Console()
    table = Table(title=f"lorabot bench engine — {result['model']}, {result['threads']} threads, greedy, {max_tokens} new tokens")
    for column in ("metric", "value", "target", "ok"):
        table.add_column(column)
    for name, (op, target) in TARGETS.items():
        value = float(result[name])  # type: ignore[arg-type]
        table.add_row(name, f"{value:.3f}", f"{op} {target}", "✓" if _meets(value, op, target) else "✗")
    for name in (
        "raw_tok_s", "core_tok_s", "ttft_turn1_s", "ttft_turn10_s", "ttft_interleaved_turn1_s",
        "ttft_interleaved_turn10_s", "raw_cold_ttft_turn10_s", "single_stream_tok_s", "aggregate_tok_s_8_concurrent",
    ):
        table.add_row(name, f"{float(result[name]):.3f}", "", "")  # type: ignore[arg-type]
    console.print(table)
