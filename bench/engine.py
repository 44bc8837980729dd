"""`lorabot bench engine`: the core against llama-cpp-python called directly, same model,
prompts and greedy settings, all measured in one run.

- core_vs_raw: decode tokens/s through ChatService ÷ `Llama.create_completion(stream=True)`.
- ttft_turn10_vs_turn1: time to first token at turn 10 of a conversation ÷ at turn 1.
- ttft_interleaved_vs_turn1: the same with N conversations taking turns round-robin.
- concurrency_ratio: aggregate tokens/s of N simultaneous requests ÷ one request alone.

Against llama.cpp's own `llama-server` (when a binary is found: `LLAMA_SERVER_BIN`, PATH, or
beside this Python, where `make llama-server` puts it): N conversations × 6 turns, all active at
once (each user waits for their reply before the next question), greedy, the same model, threads,
prompt tokens and parallelism, the two sides alternating (lorabot, server, server, lorabot):
- vs_server_tok_s: aggregate completion tokens/s, lorabot ÷ server.
- vs_server_ttft_burst: time to first token at turn 1 (all N arrive together), p50, lorabot ÷ server.
- vs_server_ttft_last_p95: time to first token at the last turn, p95, lorabot ÷ server.

A remote model (`--model NAME` of an entry with endpoint URLs) is measured through ChatService
the same way; the comparisons that need the GGUF in this process (core_vs_raw, raw_*, the
llama-server side) are null, with the reason in `raw_reason` / `vs_server_reason`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from core.compute import GOMP_SPINCOUNT_BEFORE, OMP_WAIT_POLICY_BEFORE, compute_thread
from core.registry import ModelRegistry
from core.service import ChatService
from core.settings import CoreSettings
from training.evaluate.timing import decode_rate, timed_reply

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
SERVER_TARGETS = {
    "vs_server_tok_s": (">=", 1.0),
    "vs_server_ttft_burst": ("<=", 1.5),
    "vs_server_ttft_last_p95": ("<=", 1.0),
}
SERVER_TURNS = 6
SERVER_READY_S = 180.0  # llama-server loads the model before /health answers 200
SERVER_ROUNDS = (
    4  # per side, alternating: lorabot, server, server, lorabot, lorabot, server, ...; runs differ by ±3 %
)


class RawLlama:
    """llama-cpp-python on its own, fed the same prompt tokens the core builds."""

    def __init__(self, settings: CoreSettings, model_path: Path, max_tokens: int) -> None:
        import llama_cpp

        from core.engines.llama import LlamaEngine
        from core.registry import ModelEntry

        self.max_tokens = max_tokens
        self.system = settings.system_prompt
        self.template = LlamaEngine.load(
            ModelEntry(name="raw", path=model_path), settings.model_copy(update={"kv_slots": 1})
        )
        self.llm = llama_cpp.Llama(
            str(model_path), n_ctx=settings.context_length, n_threads=settings.resolved_threads, verbose=False
        )

    def decode_tok_s(self, question: str) -> float:
        prompt = self.template.prompt_tokens(
            [{"role": "system", "content": self.system}, {"role": "user", "content": question}]
        )
        self.llm.reset()
        stamps = [
            time.perf_counter()
            for _ in self.llm.create_completion(
                prompt, max_tokens=self.max_tokens, temperature=0.0, stream=True
            )
        ]
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
        next(
            iter(
                self.llm.create_completion(
                    self.template.prompt_tokens(history[:-1]), max_tokens=1, temperature=0.0, stream=True
                )
            )
        )
        return time.perf_counter() - started

    def close(self) -> None:
        self.llm.close()
        self.template.close()


async def measure(
    settings: CoreSettings,
    model_path: Path | None,
    turns: int,
    conversations: int,
    max_tokens: int,
    repeats: int = 3,
) -> dict[str, float | None]:
    """Every comparison alternates its two sides so a busy machine slows both alike.

    The raw side runs on the core's compute thread too: llama.cpp calls from a second thread
    would start a second OpenMP team, which slows both sides (see core/compute.py). Without a
    `model_path` (a remote model) there is no raw side: only the core is measured.
    """
    compute = compute_thread()
    raw = await compute.call(RawLlama, settings, model_path, max_tokens) if model_path is not None else None
    service = ChatService(settings)
    await service.start()
    try:
        await timed_reply(service, "warmup", "warmup", "Hello!")  # loads the model
        if raw is not None:
            await compute.call(raw.decode_tok_s, "Hello!")
        raw_rates, core_rates = [], []
        for index, question in enumerate(QUESTIONS):
            if raw is not None:
                raw_rates.append(await compute.call(raw.decode_tok_s, question))
            core_rates.append(
                (await timed_reply(service, f"rate-{index}", f"rate-{index}", question)).decode_tok_s
            )

        # One conversation at a time, `turns` turns each (`repeats` conversations, for medians).
        single = [
            [
                (await timed_reply(service, f"solo-{r}", "solo", QUESTIONS[(t + r) % len(QUESTIONS)])).ttft_s
                for t in range(turns)
            ]
            for r in range(repeats)
        ]

        # `conversations` conversations taking turns round-robin.
        interleaved: list[list[float]] = [[] for _ in range(conversations)]
        for turn in range(turns):
            for conv in range(conversations):
                question = QUESTIONS[(turn + conv) % len(QUESTIONS)]
                interleaved[conv].append(
                    (await timed_reply(service, f"rr-{conv}", f"rr-{conv}", question)).ttft_s
                )
        cold = await compute.call(raw.cold_ttft, turns) if raw is not None else None

        # Concurrency: one request alone, then `conversations` at once, `repeats` times.
        singles, aggregates = [], []
        for repeat in range(repeats):
            started = time.perf_counter()
            done = (await timed_reply(service, f"alone-{repeat}", f"alone-{repeat}", QUESTIONS[repeat])).done
            singles.append(done.completion_tokens / (time.perf_counter() - started))
            started = time.perf_counter()
            results = await asyncio.gather(
                *(
                    timed_reply(service, f"burst-{repeat}-{i}", f"burst-{i}", QUESTIONS[repeat])
                    for i in range(conversations)
                )
            )
            aggregates.append(
                sum(reply.done.completion_tokens for reply in results) / (time.perf_counter() - started)
            )
    finally:
        await service.close()
        if raw is not None:
            await compute.call(raw.close)
    return {
        "raw_tok_s": statistics.median(raw_rates) if raw_rates else None,
        "core_tok_s": statistics.median(core_rates),
        "core_vs_raw": statistics.median(c / r for c, r in zip(core_rates, raw_rates, strict=True) if r > 0)
        if raw_rates
        else None,
        "ttft_turn1_s": statistics.median(row[0] for row in single),
        "ttft_turn10_s": statistics.median(row[-1] for row in single),
        "ttft_interleaved_turn1_s": statistics.median(row[0] for row in interleaved),
        "ttft_interleaved_turn10_s": statistics.median(row[-1] for row in interleaved),
        "raw_cold_ttft_turn10_s": cold,
        "single_stream_tok_s": statistics.median(singles),
        "aggregate_tok_s_8_concurrent": statistics.median(aggregates),
        "concurrency_ratio": statistics.median(a / s for a, s in zip(aggregates, singles, strict=True)),
    }


# -- against llama.cpp's llama-server ------------------------------------------------------------
def find_llama_server() -> str | None:
    """`LLAMA_SERVER_BIN`, else `llama-server` on PATH, else beside this Python (the venv's bin,
    where `make llama-server` installs it)."""
    configured = os.environ.get("LLAMA_SERVER_BIN")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("llama-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "llama-server"
    return str(beside) if os.access(beside, os.X_OK) else None


class LlamaServer:
    """llama.cpp's `llama-server` on a free loopback port, as a user would run it next to a bot:
    `--parallel N` slots of `context_length` tokens each, the same threads, prompt caching on."""

    def __init__(
        self, binary: str, model_path: Path, *, threads: int, parallel: int, context_length: int, log: Path
    ) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            binary,
            "-m",
            str(model_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--threads",
            str(threads),
            "--threads-batch",
            str(threads),
            "--parallel",
            str(parallel),
            "--ctx-size",
            str(parallel * context_length),
        ]
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        # Run as a user would: with their own OpenMP wait policy and spin count (lorabot sets
        # PASSIVE with a short spin for itself, core/compute.py), unless LLAMA_SERVER_OMP_WAIT_POLICY
        # asks for another policy.
        self.env = dict(os.environ)
        if GOMP_SPINCOUNT_BEFORE is None:
            self.env.pop("GOMP_SPINCOUNT", None)
        else:
            self.env["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT_BEFORE
        self.omp_wait_policy = os.environ.get("LLAMA_SERVER_OMP_WAIT_POLICY") or OMP_WAIT_POLICY_BEFORE
        if self.omp_wait_policy:
            self.env["OMP_WAIT_POLICY"] = self.omp_wait_policy
        else:
            self.env.pop("OMP_WAIT_POLICY", None)

    async def start(self, client: object) -> None:
        import httpx

        assert isinstance(client, httpx.AsyncClient)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220  (returns at once; the server runs on its own)
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
            )
        deadline = time.monotonic() + SERVER_READY_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}: {self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{self.url}/health", timeout=5)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"llama-server not ready after {SERVER_READY_S:.0f} s: {self._log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-5:])
        return ""

    async def complete(
        self, client: object, prompt: list[int], max_tokens: int, started: float | None = None
    ) -> tuple[float | None, str, int]:
        """Stream a completion of `prompt` (token ids, so both sides read exactly the same tokens)
        through the OpenAI-compatible API; returns (seconds from `started` to the first text,
        text, tokens generated)."""
        body = {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "cache_prompt": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter() if started is None else started
        first: float | None = None
        pieces: list[str] = []
        chunks, tokens = 0, None
        async with client.stream("POST", f"{self.url}/v1/completions", json=body) as response:  # type: ignore[attr-defined]
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                for choice in chunk.get("choices") or []:
                    if choice.get("text"):
                        if first is None:
                            first = time.perf_counter() - started
                        pieces.append(choice["text"])
                        chunks += 1
                usage = chunk.get("usage") or {}
                if "completion_tokens" in usage:
                    tokens = int(usage["completion_tokens"])
                elif "predicted_n" in (chunk.get("timings") or {}):
                    tokens = int(chunk["timings"]["predicted_n"])
        return first, "".join(pieces), tokens if tokens is not None else chunks


Ask = Callable[[int, str], Awaitable[tuple[float, int]]]  # (conversation, question) -> (ttft s, tokens)


# Each round's questions open differently, so that every round's turn 1 is a burst of prompts
# neither side has seen: with the same questions again, both sides found them in a slot and the
# "burst" measured a prompt-cache hit (tens of milliseconds) instead of reading 8 prompts.
ROUND_OPENINGS = ["", "Quick question: ", "Please answer this: ", "I was wondering: ", "Help me out: "]


def round_question(round_index: int, index: int) -> str:
    opening = ROUND_OPENINGS[round_index % len(ROUND_OPENINGS)]
    if round_index >= len(ROUND_OPENINGS):
        opening = f"({round_index}) {opening}"
    question = QUESTIONS[index % len(QUESTIONS)]
    return opening + (question[0].lower() + question[1:] if opening else question)


async def conversations_at_once(
    ask: Ask, conversations: int, turns: int, round_index: int = 0
) -> dict[str, float]:
    """`conversations` users at once, each asking `turns` questions in turn and waiting for each
    reply: turn 1 is a burst (all arrive together), later turns arrive as replies end."""
    ttfts: list[list[float]] = [[] for _ in range(turns)]
    tokens = 0

    async def user(conv: int) -> None:
        nonlocal tokens
        for turn in range(turns):
            ttft, count = await ask(conv, round_question(round_index, turn + conv))
            ttfts[turn].append(ttft)
            tokens += count

    started = time.perf_counter()
    await asyncio.gather(*(user(conv) for conv in range(conversations)))
    wall = time.perf_counter() - started
    return {
        "tok_s": tokens / wall,
        "ttft_burst_p50_s": statistics.median(ttfts[0]),
        "ttft_last_p95_s": _p95(ttfts[-1]),
        "wall_s": wall,
        "completion_tokens": float(tokens),
    }


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


async def measure_vs_server(
    settings: CoreSettings,
    model_path: Path,
    binary: str,
    *,
    conversations: int,
    turns: int,
    max_tokens: int,
    rounds: int,
) -> dict[str, object]:
    """The same scenario through lorabot's ChatService (`LORABOT_PARALLEL` = `LORABOT_KV_SLOTS` =
    conversations) and through llama-server (`--parallel` = conversations), alternating, each
    round with new conversations. Ratios are lorabot ÷ server, per pair of rounds, then the median."""
    import httpx

    from core.engines.llama import LlamaEngine
    from core.registry import ModelEntry

    compute = compute_thread()
    tokenizer = await compute.call(
        LlamaEngine.load,
        ModelEntry(name="tokenizer", path=model_path),
        settings.model_copy(update={"kv_slots": 1}),
    )
    # The same slots as the server's: one per conversation, all generating at once.
    service = ChatService(
        settings.model_copy(
            update={
                "parallel": conversations,
                "kv_slots": conversations,
                "data_dir": settings.data_dir / "vs-server",
            }
        )
    )
    server = LlamaServer(
        binary,
        model_path,
        threads=settings.resolved_threads,
        parallel=conversations,
        context_length=settings.context_length,
        log=settings.data_dir / "llama-server.log",
    )
    system = {"role": "system", "content": settings.system_prompt}
    limits = httpx.Limits(max_connections=conversations + 4, max_keepalive_connections=conversations + 4)
    lorabot_runs: list[dict[str, float]] = []
    server_runs: list[dict[str, float]] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        try:
            await service.start()
            await server.start(client)
            await timed_reply(service, "vs-warmup", "vs-warmup", "Hello!")
            await server.complete(
                client, tokenizer.prompt_tokens([system, {"role": "user", "content": "Hello!"}]), max_tokens
            )

            async def lorabot_round(index: int) -> dict[str, float]:
                async def ask(conv: int, question: str) -> tuple[float, int]:
                    reply = await timed_reply(service, f"vs{index}-c{conv}", f"vs{index}-u{conv}", question)
                    return reply.ttft_s, reply.done.completion_tokens

                return await conversations_at_once(ask, conversations, turns, index)

            async def server_round(index: int) -> dict[str, float]:
                histories: list[list[dict[str, str]]] = [[] for _ in range(conversations)]

                async def ask(conv: int, question: str) -> tuple[float, int]:
                    started = time.perf_counter()
                    history = histories[conv]
                    history.append({"role": "user", "content": question})
                    prompt = tokenizer.prompt_tokens([system, *history])
                    first, text, count = await server.complete(client, prompt, max_tokens, started)
                    history.append({"role": "assistant", "content": text})
                    if first is None:
                        raise RuntimeError("llama-server gave no reply")
                    return first, count

                return await conversations_at_once(ask, conversations, turns, index)

            for index in range(rounds):
                order = ("lorabot", "server") if index % 2 == 0 else ("server", "lorabot")
                for side in order:
                    if side == "lorabot":
                        lorabot_runs.append(await lorabot_round(index))
                    else:
                        server_runs.append(await server_round(index))
        finally:
            server.stop()
            await service.close()
            await compute.call(tokenizer.close)

    def ratio(name: str) -> float:
        return statistics.median(
            ours[name] / theirs[name]
            for ours, theirs in zip(lorabot_runs, server_runs, strict=True)
            if theirs[name] > 0
        )

    def summary(runs: list[dict[str, float]]) -> dict[str, float]:
        return {name: statistics.median(run[name] for run in runs) for name in runs[0]}

    return {
        "llama_server": {
            "binary": binary,
            "command": " ".join(server.command[1:]).replace(str(model_path), "MODEL"),
            "server_omp_wait_policy": server.omp_wait_policy or "unset (OpenMP's default)",
            "lorabot_omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "conversations": conversations,
            "turns": turns,
            "rounds": rounds,
            "lorabot": summary(lorabot_runs),
            "server": summary(server_runs),
            "lorabot_runs": lorabot_runs,
            "server_runs": server_runs,
        },
        "vs_server_tok_s": ratio("tok_s"),
        "vs_server_ttft_burst": ratio("ttft_burst_p50_s"),
        "vs_server_ttft_last_p95": ratio("ttft_last_p95_s"),
        "vs_server_reason": None,
    }


def run(
    settings: CoreSettings, *, turns: int, conversations: int, max_tokens: int, model: str | None = None
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as data_dir:
        bench_settings = settings.model_copy(
            update={
                "default_model": model or settings.default_model,
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
        binary = find_llama_server()
        rounds = int(os.environ.get("LLAMA_SERVER_ROUNDS", SERVER_ROUNDS))

        async def both() -> tuple[dict[str, float | None], dict[str, object]]:
            measured = await measure(bench_settings, entry.path, turns, conversations, max_tokens)
            if entry.path is None:
                return measured, _no_server("a remote model: its servers are measured through lorabot only")
            if binary is None:
                return measured, _no_server(
                    "no llama-server binary: set LLAMA_SERVER_BIN or put one on PATH "
                    "(`make llama-server` builds it)"
                )
            try:
                versus = await measure_vs_server(
                    bench_settings,
                    entry.path,
                    binary,
                    conversations=conversations,
                    turns=SERVER_TURNS,
                    max_tokens=max_tokens,
                    rounds=rounds,
                )
            except Exception as error:  # the rest of the benchmark stands; say why this part is missing
                return measured, _no_server(f"llama-server run failed: {type(error).__name__}: {error}")
            return measured, versus

        measured, versus = asyncio.run(both())
    result: dict[str, object] = {
        "model": entry.name,
        "threads": bench_settings.resolved_threads,
        "max_tokens": max_tokens,
        "turns": turns,
        "conversations": conversations,
        **measured,
        "ttft_turn10_vs_turn1": measured["ttft_turn10_s"] / measured["ttft_turn1_s"],
        "ttft_interleaved_vs_turn1": measured["ttft_interleaved_turn10_s"]
        / measured["ttft_interleaved_turn1_s"],
        **versus,
        "raw_reason": None
        if entry.path is not None
        else "a remote model: no GGUF in this process to call directly",
    }
    result["targets_met"] = all(
        _meets(result[name], *target) for name, target in TARGETS.items() if result[name] is not None
    )
    result["server_targets_met"] = (
        None
        if versus["vs_server_reason"]
        else all(_meets(result[name], *target) for name, target in SERVER_TARGETS.items())
    )
    return result


def _no_server(reason: str) -> dict[str, object]:
    return {"llama_server": None, **{name: None for name in SERVER_TARGETS}, "vs_server_reason": reason}


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _meets(value: object, op: str, target: float) -> bool:
    return float(value) >= target if op == ">=" else float(value) <= target  # type: ignore[arg-type]


def main(
    settings: CoreSettings,
    *,
    json_output: bool,
    turns: int,
    conversations: int,
    max_tokens: int,
    model: str | None = None,
) -> None:
    result = run(settings, turns=turns, conversations=conversations, max_tokens=max_tokens, model=model)
    if json_output:
        print(json.dumps(_rounded(result)))
        return
    console = Console()
    table = Table(
        title=f"lorabot bench engine — {result['model']}, {result['threads']} threads, greedy, "
        f"{max_tokens} new tokens"
    )
    for column in ("metric", "value", "target", "ok"):
        table.add_column(column)
    for name, (op, target) in TARGETS.items():
        if result[name] is None:  # core_vs_raw of a remote model
            table.add_row(name, "n/a", f"{op} {target}", str(result["raw_reason"]))
            continue
        value = float(result[name])  # type: ignore[arg-type]
        table.add_row(name, f"{value:.3f}", f"{op} {target}", "✓" if _meets(value, op, target) else "✗")
    for name in (
        "raw_tok_s",
        "core_tok_s",
        "ttft_turn1_s",
        "ttft_turn10_s",
        "ttft_interleaved_turn1_s",
        "ttft_interleaved_turn10_s",
        "raw_cold_ttft_turn10_s",
        "single_stream_tok_s",
        "aggregate_tok_s_8_concurrent",
    ):
        shown = "n/a" if result[name] is None else f"{float(result[name]):.3f}"  # type: ignore[arg-type]
        table.add_row(name, shown, "", "")
    for index, (name, (op, target)) in enumerate(SERVER_TARGETS.items()):
        if result[name] is None:  # the reason once, under the first of them
            table.add_row(name, "n/a", f"{op} {target}", "" if index else str(result["vs_server_reason"]))
            continue
        value = float(result[name])  # type: ignore[arg-type]
        table.add_row(name, f"{value:.3f}", f"{op} {target}", "✓" if _meets(value, op, target) else "✗")
    if isinstance(result["llama_server"], dict):
        for side in ("lorabot", "server"):
            figures = result["llama_server"][side]
            table.add_row(
                f"{side} ({conversations}×{SERVER_TURNS} at once)",
                f"{figures['tok_s']:.1f} tok/s",
                f"TTFT burst p50 {figures['ttft_burst_p50_s']:.2f} s, "
                f"last p95 {figures['ttft_last_p95_s']:.2f} s",
                "",
            )
    console.print(table)
