"""One evaluation: every model in turn (speed through the core, then perplexity from the GGUF),
then the optional judge, then report.md / report.json / tradeoff.png in the output folder.

Models are measured one at a time, in the order given, each unloaded before the next, with the
same settings; the first model is the baseline the trade-off sentences compare against. A remote
model (endpoint URLs) is measured the same way through the core; it has no GGUF here, so its
perplexity, file size and memory are left out (null) with the reason in `quality_note`.
"""

from __future__ import annotations

import asyncio
import os
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from core.compute import compute_thread
from core.errors import UnknownModel
from core.registry import ModelEntry, ModelRegistry, RegistryError
from core.settings import CoreSettings
from training.evaluate.errors import EvalError
from training.evaluate.inputs import DEFAULT_HELDOUT, DEFAULT_PROMPTS, load_heldout, load_prompts


@dataclass
class EvalOptions:
    models: list[str]
    out_dir: Path = Path("out/eval")
    heldout: str | Path | None = None  # default: the tiny preset's held-out split
    prompts: Path | None = None  # default: training/evaluate/prompts.txt
    max_new_tokens: int = 160
    heldout_limit: int | None = None
    judge: str | None = None  # a registered model name
    judge_url: str | None = None  # an OpenAI-compatible base URL (…/v1)
    judge_model: str | None = None
    judge_api_key: str | None = None
    progress: bool = True


def resolve_models(registry: ModelRegistry, names: list[str]) -> list[ModelEntry]:
    """Registry entries for `names`, in order; unknown names list the valid ones."""
    names = list(dict.fromkeys(name.strip() for name in names if name.strip()))
    if not names:
        raise EvalError(f"no model given; registered models: {', '.join(registry.names())}")
    try:
        entries = [registry.get(name) for name in names]
    except UnknownModel as error:
        raise EvalError(error.user_message) from None
    except RegistryError as error:
        raise EvalError(str(error)) from None
    for entry in entries:
        if entry.path is not None and not entry.path.is_file():
            raise EvalError(f"model {entry.name!r}: file not found: {entry.path}")
    return entries


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def evaluate_model(
    settings: CoreSettings, entry: ModelEntry, prompts: list[str], heldout, options: EvalOptions
) -> dict[str, Any]:
    from training.evaluate.perplexity import gguf_perplexity
    from training.evaluate.speed import measure_speed

    speed = asyncio.run(
        measure_speed(
            settings, entry, prompts, max_new_tokens=options.max_new_tokens, progress=options.progress
        )
    )
    if entry.path is None:  # remote: the weights are on the servers
        return {
            "name": entry.name,
            "path": None,
            "urls": entry.urls,
            "description": entry.description,
            **asdict(speed),
            "file_size_mib": None,
            "rss_after_load_mib": None,
            "rss_model_mib": None,
            "heldout_loss": None,
            "perplexity": None,
            "heldout_tokens": 0,
            "heldout_truncated": 0,
            "quality_note": "remote model: held-out perplexity needs the GGUF on this machine",
        }
    # llama.cpp work runs on the core's compute thread: a second calling thread would start a
    # second OpenMP team and slow every later measurement (see core/compute.py).
    quality = compute_thread().run(
        partial(
            gguf_perplexity,
            entry.path,
            heldout,
            threads=settings.resolved_threads,
            n_ctx=settings.context_length,
            progress=options.progress,
        )
    )
    return {
        "name": entry.name,
        "path": str(entry.path),
        "description": entry.description,
        **asdict(speed),
        "heldout_loss": quality.loss,
        "perplexity": quality.perplexity,
        "heldout_tokens": quality.tokens,
        "heldout_truncated": quality.truncated,
    }


def make_judge(settings: CoreSettings, registry: ModelRegistry, options: EvalOptions):
    from training.evaluate.judge import EndpointJudge, LocalJudge

    if options.judge_url:
        if not options.judge_model:
            raise EvalError("--judge-url needs --judge-model (the model name the endpoint serves)")
        return EndpointJudge(options.judge_url, options.judge_model, options.judge_api_key)
    if options.judge:
        entry = resolve_models(registry, [options.judge])[0]
        if entry.path is None:  # a remote judge: its first endpoint, its key from its variable
            api_key = os.environ.get(entry.api_key_env) if entry.api_key_env else None
            return EndpointJudge(entry.urls[0], entry.remote_model or entry.name, api_key)
        return LocalJudge(entry.name, entry.path, threads=settings.resolved_threads)
    return None


def run_judge(judge, prompts: list[str], models: list[dict[str, Any]], progress: bool) -> dict[str, Any]:
    """Every model against the first one."""
    from training.evaluate.judge import compare

    base = models[0]
    pairs = []
    for model in models[1:]:
        result = compare(
            judge, prompts, model["answers"], base["answers"], model["name"], base["name"], progress
        )
        pairs.append({**asdict(result), "n": result.n, "win_rate": result.win_rate})
    return {"judge": judge.name, "pairs": pairs}


def run_eval(settings: CoreSettings, options: EvalOptions) -> dict[str, Any]:
    """Measure, judge, write DIR/report.md, DIR/report.json and DIR/tradeoff.png; returns the report."""
    from tqdm.auto import tqdm

    from training.evaluate.plot import plot_tradeoff
    from training.evaluate.report import tradeoff_lines, write_report

    registry = ModelRegistry(settings.resolved_models_file)
    entries = resolve_models(registry, options.models)
    prompts = load_prompts(options.prompts)
    heldout = load_heldout(options.heldout, options.heldout_limit)
    if options.judge and not options.judge_url:
        resolve_models(registry, [options.judge])  # a bad judge name fails before the long part
    models = [
        evaluate_model(settings, entry, prompts, heldout, options)
        for entry in tqdm(entries, desc="models", disable=not options.progress)
    ]
    judged = None
    # Loaded only now, so the judge takes no memory or CPU while the models are measured.
    compute = compute_thread()
    if len(models) > 1 and (judge := compute.run(make_judge, settings, registry, options)) is not None:
        try:
            judged = compute.run(run_judge, judge, prompts, models, options.progress)
        finally:
            compute.run(judge.close)
    report: dict[str, Any] = {
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "settings": {
            "threads": settings.resolved_threads,
            "context_length": settings.context_length,
            "kv_slots": settings.kv_slots,
            "max_new_tokens": options.max_new_tokens,
            "temperature": 0.0,
            "system_prompt": settings.system_prompt,
            "prompts_file": str(options.prompts or DEFAULT_PROMPTS.name),
            "prompts": len(prompts),
            "heldout": str(options.heldout or DEFAULT_HELDOUT),
            "heldout_conversations": len(heldout),
        },
        "prompts": prompts,
        "models": models,
        "tradeoff": tradeoff_lines(models),
        "judge": judged,
    }
    write_report(report, options.out_dir)
    plot_tradeoff(models, options.out_dir / "tradeoff.png")
    return report
