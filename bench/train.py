"""`lorabot bench train`: LoRA training throughput on one GPU, several ways, same data, same loss.

    (a) the original notebook's settings, Unsloth: micro-batch 2 x grad-accum 4, 1024 tokens, padded
    (b) the same settings, plain transformers + peft + trl
    (c) lorabot's tuned baseline (preset `baseline-tuned`): same 8 x 1024 tokens per optimizer step
        and the same loss, but padding-free packing (BFD) in one micro-batch of 8 rows, no
        recomputation, Unsloth, 4-bit base
    (d) lorabot's fast baseline (preset `baseline-fast`): (c) on a 16-bit base (bf16 LoRA), packed
        rows' attention in one varlen flash call per layer; same tokens per step and learning rate
        (docs/benchmarks.md). A case whose preset has fewer max_steps than `baseline-tuned` runs
        that share of `--steps`, so it sees as many real tokens as (c)
    (e) the `improved` preset's shape (Llama-3.2-3B, r=16) with the notebook's settings, as (a)
    (f) the same 3B shape with `baseline-fast`'s settings, as (d)

Levers (`--cases lever:...`, or `--cases levers` for all): (c) with one thing changed, to
measure what each gives: a 16-bit base, larger micro-batches, DataLoader workers, torch.compile,
fewer host syncs, SDPA off cuDNN attention, varlen flash attention for packed rows, Unsloth's
per-block compile off. Each case is a dict of settings, so a new one is one line in CASES or LEVERS.

Model: Llama-3.2-1B's (or 3B's) architecture with random weights (no hub needed), LoRA on
q,k,v,o,gate,up,down. Data: synthetic conversations whose lengths are spread like FineTome-100k's
(log-normal, median ~420 tokens, ~15% over 1024 and truncated), so padding waste shows.

Each case runs in its own process: Unsloth patches transformers on import, so (b) must never see
it, and each peak-memory figure is that case's alone.

Reported: real (non-padding) tokens/s, MFU, peak GPU memory, and the loss against cumulative real
tokens seen (cases with more real tokens per optimizer step are ahead per step, so curves are
compared at equal tokens, not steps). MFU counts the FLOPs a LoRA step needs: forward 2N +
input-gradient backward 2N per token (N = matmul weights incl. lm_head; the frozen base gets no
weight gradients) plus causal attention, over the GPU's dense bf16 peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from training.config import read_preset
from training.data.synthetic import synthetic_conversations
from training.errors import HardwareError, TrainingError

STEP_KEYS = (
    "batch_size",
    "grad_accum",
    "packing",
    "gradient_checkpointing",
    "load_in_4bit",
    "learning_rate",
    "warmup_steps",
    "cudnn_attention",
    "varlen_attention",
)
IMPROVED_SHAPE = dict(shape="llama-3.2-3b", lora_r=16)  # the `improved` preset: Llama-3.2-3B, r=16, alpha=32


def preset_settings(name: str) -> dict[str, Any]:
    """The step-shaping settings of a preset file (the rest of a case comes from the benchmark)."""
    preset = read_preset(name)
    return {key: preset[key] for key in STEP_KEYS if key in preset}


def preset_max_steps(name: str) -> int:
    return int(read_preset(name)["max_steps"])


def case_steps(spec: dict[str, Any], steps: int) -> int:
    """The optimizer steps a case runs: `--steps`, scaled for cases with more tokens per step."""
    return max(1, round(steps * spec.get("steps_scale", 1.0)))


NOTEBOOK = dict(
    backend="unsloth",
    batch_size=2,
    grad_accum=4,
    packing=False,
    padding_free=False,
    gradient_checkpointing="unsloth",
)
TUNED = dict(backend="unsloth", padding_free=None, **preset_settings("baseline-tuned"))
# A preset with more tokens per step in fewer steps: scaling a case's steps by the presets' max_steps
# keeps its learning-rate schedule on the same real tokens as (c)'s, so losses compare.
FAST = dict(
    backend="unsloth",
    padding_free=None,
    **preset_settings("baseline-fast"),
    steps_scale=preset_max_steps("baseline-fast") / preset_max_steps("baseline-tuned"),
)
CASES: dict[str, dict[str, Any]] = {
    "a": dict(title="Unsloth, notebook settings (2x4, padded)", **NOTEBOOK),
    "b": dict(
        title="transformers+peft+trl, same settings",
        **{**NOTEBOOK, "backend": "hf", "gradient_checkpointing": True},
    ),
    "c": dict(title="lorabot tuned (8x1, packed, padding-free)", **TUNED),
    "d": dict(title="lorabot fast (baseline-fast)", **FAST),
    "e": dict(title="3B improved, notebook settings (2x4, padded)", **NOTEBOOK, **IMPROVED_SHAPE),
    "f": dict(title="3B improved, baseline-fast settings", **FAST, **IMPROVED_SHAPE),
}
# (c) with one thing changed. `sft`: SFTConfig fields; `env`: set before anything is imported.
LEVERS: dict[str, dict[str, Any]] = {
    "lever:bf16": dict(title="(c) + 16-bit base (bf16 LoRA)", load_in_4bit=False),
    "lever:mb16": dict(title="(c) + micro-batch 16 rows (16k tokens/step)", batch_size=16),
    "lever:mb32": dict(title="(c) + micro-batch 32 rows (32k tokens/step)", batch_size=32),
    "lever:workers": dict(
        title="(c) + 2 DataLoader workers, pinned, prefetch 4",
        sft=dict(
            dataloader_num_workers=2,
            dataloader_pin_memory=True,
            dataloader_persistent_workers=True,
            dataloader_prefetch_factor=4,
        ),
    ),
    "lever:compile": dict(title="(c) + torch.compile (trainer)", sft=dict(torch_compile=True)),
    "lever:log10": dict(
        title="(c) + loss read every 10 steps (fewer host syncs)", sft=dict(logging_steps=10)
    ),
    "lever:bf16-mb16": dict(title="(c) + 16-bit base + micro-batch 16", load_in_4bit=False, batch_size=16),
    "lever:bf16-mb32": dict(title="(c) + 16-bit base + micro-batch 32", load_in_4bit=False, batch_size=32),
    "lever:bf16-mb64": dict(title="(c) + 16-bit base + micro-batch 64", load_in_4bit=False, batch_size=64),
    "lever:bf16-mb32-lr": dict(
        title="(c) + 16-bit base + micro-batch 32, lr 8e-4, warm-up 1",
        load_in_4bit=False,
        batch_size=32,
        learning_rate=8e-4,
        warmup_steps=1,
    ),
    "lever:bf16-compile": dict(
        title="(c) + 16-bit base + torch.compile", load_in_4bit=False, sft=dict(torch_compile=True)
    ),
    "lever:no-cudnn": dict(title="(c) + SDPA off cuDNN attention (flash)", cudnn_attention=False),
    "lever:bf16-mb16-no-cudnn": dict(
        title="(c) + 16-bit base + micro-batch 16 + SDPA off cuDNN",
        load_in_4bit=False,
        batch_size=16,
        cudnn_attention=False,
    ),
    "lever:varlen": dict(title="(c) + varlen flash attention (one call per layer)", varlen_attention=True),
    "lever:bf16-varlen": dict(
        title="(c) + 16-bit base + varlen attention", load_in_4bit=False, varlen_attention=True
    ),
    "lever:bf16-mb16-varlen": dict(
        title="(c) + 16-bit base + micro-batch 16 + varlen attention",
        load_in_4bit=False,
        batch_size=16,
        varlen_attention=True,
    ),
    "lever:bf16-mb16-varlen-lr": dict(
        title="(c) + 16-bit base + mb 16 + varlen, lr 4e-4, warm-up 3, half the steps",
        load_in_4bit=False,
        batch_size=16,
        varlen_attention=True,
        learning_rate=4e-4,
        warmup_steps=3,
        steps_scale=0.5,
    ),
    "lever:bf16-mb32-varlen": dict(
        title="(c) + 16-bit base + micro-batch 32 + varlen attention",
        load_in_4bit=False,
        batch_size=32,
        varlen_attention=True,
    ),
    "lever:bf16-noblock": dict(
        title="(c) + 16-bit base, Unsloth's per-block compile off",
        load_in_4bit=False,
        env=dict(UNSLOTH_BLOCK_COMPILE="0"),
    ),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
WARMUP = 3
PROFILE_STEPS = 2  # with --profile: the two steps just before the timed window


def case_spec(name: str) -> dict[str, Any]:
    """A case's full settings: a row of CASES, or (c) with a lever's changes on top."""
    if name in CASES:
        return dict(CASES[name])
    if name in LEVERS:
        return {**CASES["c"], **LEVERS[name]}
    raise KeyError(name)


def expand_cases(names: list[str]) -> list[str]:
    """`levers` stands for (c) and every lever, in order; other names are kept as given."""
    out: list[str] = []
    for name in names:
        out.extend(["c", *LEVERS] if name == "levers" else [name])
    return list(dict.fromkeys(out))


def matmul_params(config: Any) -> int:
    """Weights that take part in a matmul per token (embedding lookup excluded, lm_head included)."""
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv = config.num_attention_heads * head, config.num_key_value_heads * head
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f
    return layers * per_layer + d * config.vocab_size


def lora_step_flops(config: Any, lengths: list[int]) -> float:
    """FLOPs for these sequences: 4N per token (fwd + input grads) + causal attention (x3 for bwd)."""
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attn_width = config.num_attention_heads * head
    dense = 4 * matmul_params(config) * sum(lengths)
    attention = 3 * sum(2 * config.num_hidden_layers * attn_width * n * n for n in lengths)
    return float(dense + attention)


def peak_flops(device_name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16.items() if key in device_name), None)


def loss_at_tokens(curve: list[list[float]], milestones: list[int]) -> list[float | None]:
    """Mean loss of the steps whose cumulative real-token count falls in each milestone's window.

    Window k is (m[k-1], m[k]]: every step is counted once, and two cases are compared on the same
    stretch of data seen, however many tokens their steps hold."""
    out: list[float | None] = []
    low = 0
    for high in milestones:
        window = [loss for tokens, loss in curve if low < tokens <= high]
        out.append(round(sum(window) / len(window), 4) if window else None)
        low = high
    return out


def token_milestones(curves: list[list[list[float]]], count: int = 5) -> list[int]:
    """`count` equal windows up to the fewest tokens any of these cases saw."""
    ends = [curve[-1][0] for curve in curves if curve]
    if not ends:
        return []
    step = int(min(ends)) // count
    return [step * (k + 1) for k in range(count)] if step else []


# ----------------------------------------------------------------------------- one case (child)
class StepRecorder:
    """Real sequence lengths per micro-batch, read on the host side, whatever runs the collator.

    The collator (in a DataLoader worker, or here) attaches the batch's lengths as a plain list;
    the wrapped `training_step` takes them off before the model sees the batch. No GPU sync."""

    KEY = "lorabot_seq_lengths"

    def __init__(self) -> None:
        self.lengths: list[int] = []
        self.fallbacks = 0  # micro-batches counted from the batch tensors instead

    def collator(self, collate):
        key = self.KEY

        def counting_collator(examples):
            batch = collate(examples)
            batch[key] = [n for ex in examples for n in (ex.get("seq_lengths") or [len(ex["input_ids"])])]
            return batch

        return counting_collator

    def training_step(self, step):
        def recording_step(model, inputs, *args, **kwargs):
            lengths = inputs.pop(self.KEY, None)
            if lengths is None:  # a backend that bypassed our collator: count the batch itself (syncs)
                self.fallbacks += 1
                mask = inputs.get("attention_mask")
                lengths = mask.sum(-1).tolist() if mask is not None else [inputs["input_ids"].numel()]
            self.lengths.extend(lengths)
            return step(model, inputs, *args, **kwargs)

        return recording_step


def profile_summary(prof: Any, wall_s: float) -> dict[str, Any]:
    """The top 18 GPU kernels of the profiled steps and how busy the GPU was (kernel time / wall time)."""
    events = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    busy_us = sum(e.self_device_time_total for e in events)
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    top = [
        {"name": e.key[:90], "ms": round(e.self_device_time_total / 1e3, 2), "calls": e.count}
        for e in events[:18]
    ]
    cpu = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    top_cpu = [
        {"name": e.key[:90], "ms": round(e.self_cpu_time_total / 1e3, 2), "calls": e.count} for e in cpu
    ]
    return {
        "wall_ms": round(wall_s * 1e3, 1),
        "gpu_busy": round(busy_us / 1e6 / wall_s, 3) if wall_s else None,
        "kernels": len(events),
        "launches": sum(e.count for e in events),
        "top": top,
        "top_cpu": top_cpu,
    }


def run_case(
    case: str,
    data: Path,
    steps: int,
    shape: str,
    lora_r: int,
    out: Path,
    backend: str | None = None,
    max_seq_length: int = 1024,
    profile: bool = False,
) -> dict:
    """Train `steps` optimizer steps with the case's settings; time steps after the warm-up.

    The trainer comes from `training.run.build_trainer`, the set-up `lorabot train` runs; only the
    timing and the count of real tokens are added here. `backend` overrides the case's (CPU tests
    run (a)/(c)'s settings through the hf backend)."""
    started = time.perf_counter()
    spec = case_spec(case)
    os.environ.update(spec.get("env", {}))
    if (backend or spec["backend"]) == "unsloth":
        os.environ.setdefault("UNSLOTH_LOG_MFU", "1")  # Unsloth's own MFU in each log: a cross-check of ours
    shape, lora_r = spec.get("shape", shape), spec.get("lora_r", lora_r)
    steps = case_steps(spec, steps)
    from training.config import build_config
    from training.hardware import detect
    from training.run import build_trainer

    settings = {key: spec[key] for key in STEP_KEYS if key in spec}
    settings["load_in_4bit"] = settings.get("load_in_4bit", True) and detect().cuda
    cfg = build_config(
        "baseline",
        base_model=f"random:{shape}",
        tokenizer=os.environ.get("LORABOT_RANDOM_TOKENIZER"),
        dataset=str(data),
        eval_fraction=0.0,
        max_eval_samples=None,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        max_steps=steps,
        backend=backend or spec["backend"],
        save_steps=10**6,
        output_dir=out / f"case-{case.replace(':', '-')}",
        export=False,
        chat_template="chatml",
        max_seq_length=max_seq_length,
        **settings,
    )
    extra: dict[str, Any] = {
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        **spec.get("sft", {}),
    }
    if spec["padding_free"] is not None:
        extra["padding_free"] = spec["padding_free"]
    setup = build_trainer(cfg, **extra)  # imports unsloth first, when it is the one
    trainer, hw = setup.trainer, setup.hw
    import torch

    cuda = torch.cuda.is_available()
    recorder = StepRecorder()
    trainer.data_collator = recorder.collator(trainer.data_collator)
    trainer.training_step = recorder.training_step(trainer.training_step)
    from transformers import TrainerCallback

    warmup = max(WARMUP, steps // 4)
    marks: list[tuple[float, int]] = []  # (host time, lengths recorded so far) at each step's end
    losses: dict[int, float] = {}
    profiled: dict[str, Any] = {}
    unsloth_mfu: list[float] = []
    profile_from = (
        warmup - 1 - PROFILE_STEPS
    )  # completed steps when profiling starts (>= 2: past compilation)

    class Timer(TrainerCallback):
        prof: Any = None
        prof_start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if profile and cuda and profile_from >= 2 and state.global_step == profile_from:
                from torch.profiler import ProfilerActivity
                from torch.profiler import profile as torch_profile

                torch.cuda.synchronize()
                self.prof = torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                self.prof.__enter__()
                self.prof_start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if cuda and step in (warmup, steps, warmup - 1 if self.prof else -1):
                torch.cuda.synchronize()  # only where a time is read: no extra host sync elsewhere
            if self.prof is not None and step == warmup - 1:
                wall = time.perf_counter() - self.prof_start
                self.prof.__exit__(None, None, None)
                profiled.update(profile_summary(self.prof, wall))
                self.prof = None
            marks.append((time.perf_counter(), len(recorder.lengths)))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses[state.global_step] = float(logs["loss"])
            if logs and "train_mfu" in logs:
                unsloth_mfu.append(float(logs["train_mfu"]))

    trainer.add_callback(Timer())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train_started = time.perf_counter()
    trainer.train()
    (t0, n0), (t1, n1) = marks[warmup - 1], marks[-1]
    lengths = recorder.lengths[n0:n1]
    seconds = t1 - t0
    flops = lora_step_flops(setup.model.config, lengths)
    peak = peak_flops(hw.device_name)
    step_tokens = [
        sum(recorder.lengths[a:b]) for (_, a), (_, b) in zip([(0.0, 0), *marks[:-1]], marks, strict=False)
    ]
    cumulative, curve = 0, []
    for step, tokens in enumerate(step_tokens, start=1):
        cumulative += tokens
        if step in losses:
            curve.append([cumulative, round(losses[step], 4)])
    result = {
        "case": case,
        "title": spec["title"],
        "backend": setup.backend,
        "device": hw.device_name,
        "shape": shape,
        "lora_r": lora_r,
        "load_in_4bit": cfg.load_in_4bit,
        "sft": spec.get("sft", {}),
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "packing": cfg.packing,
        "learning_rate": cfg.learning_rate,
        "warmup_steps": cfg.warmup_steps,
        "env": spec.get("env", {}),
        "steps": steps,
        "timed_steps": len(marks) - warmup,
        "real_tokens": sum(lengths),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(sum(lengths) / seconds, 1) if seconds > 0 else 0.0,
        "real_tokens_per_step": round(sum(step_tokens) / max(1, len(step_tokens))),
        "mfu": round(flops / seconds / peak, 4) if peak and seconds > 0 else None,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "losses": [round(losses[s], 4) for s in sorted(losses)],
        "curve": curve,  # [cumulative real tokens, loss] per logged step
        "lengths_from_batch": recorder.fallbacks,
        "setup_s": round(train_started - started, 1),
        "train_s": round(time.perf_counter() - train_started, 1),
    }
    if unsloth_mfu:
        timed = unsloth_mfu[warmup:] or unsloth_mfu
        result["unsloth_mfu"] = round(sorted(timed)[len(timed) // 2], 4)  # Unsloth's own count, a cross-check
    if profiled:
        result["profile"] = profiled
    return result


# ----------------------------------------------------------------------------- all cases (parent)
def main(
    json_output: bool = False,
    cases: list[str] | None = None,
    steps: int = 12,
    conversations: int = 2000,
    shape: str = "llama-3.2-1b",
    lora_r: int = 16,
    profile: bool = False,
    case_timeout: float | None = None,
    partial: Path | None = None,
) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise HardwareError("`lorabot bench train` measures GPU training: no CUDA GPU found here")
    cases = expand_cases(cases or list(CASES))
    from training.base_model import resolve_base

    tokenizer = os.environ.get("LORABOT_RANDOM_TOKENIZER")
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "shape": shape,
        "lora_r": lora_r,
        "steps": steps,
        "warmup_steps": max(WARMUP, steps // 4),
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "conversations.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in synthetic_conversations(conversations)) + "\n")
        for case in cases:
            resolve_base(
                f"random:{case_spec(case).get('shape', shape)}", tokenizer
            )  # once per shape, untimed
            out_file = Path(tmp) / f"{case.replace(':', '-')}.json"
            command = [
                sys.executable,
                "-m",
                "bench.train",
                CHILD,
                case,
                str(data),
                str(steps),
                shape,
                str(lora_r),
                tmp,
                str(out_file),
                "1" if profile else "0",
            ]
            try:
                proc = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, timeout=case_timeout)
                ok = proc.returncode == 0 and out_file.is_file()
                result = json.loads(out_file.read_text()) if ok else {"error": f"exit {proc.returncode}"}
            except subprocess.TimeoutExpired:
                result = {"error": f"timed out after {case_timeout:.0f} s"}
            results["cases"][case] = {"title": case_spec(case)["title"], **result}
            if partial:  # each case as it ends: a run cut short still leaves what it measured
                with open(partial, "a", encoding="utf-8") as lines:
                    lines.write(json.dumps({"case": case, **result}) + "\n")
            print(
                f"bench train: {case} done: "
                f"{json.dumps({k: v for k, v in result.items() if k not in ('curve', 'losses', 'profile')})}",
                file=sys.stderr,
                flush=True,
            )
    add_comparisons(results)
    print(json.dumps(results) if json_output else table(results))
    return results


def add_comparisons(results: dict) -> None:
    """Speed ratios, and the loss of each shape's cases at the same real tokens seen."""
    done = {k: v for k, v in results["cases"].items() if "error" not in v}
    speed = {k: v.get("tokens_per_s") for k, v in done.items()}
    for key, (top, bottom) in {
        "a_over_b": ("a", "b"),
        "c_over_a": ("c", "a"),
        "d_over_a": ("d", "a"),
        "d_over_c": ("d", "c"),
        "f_over_e": ("f", "e"),
    }.items():
        if speed.get(top) and speed.get(bottom):
            results[key] = round(speed[top] / speed[bottom], 2)
    compared: dict[str, Any] = {}
    for case_shape in dict.fromkeys(v.get("shape", results["shape"]) for v in done.values()):
        group = {
            k: v for k, v in done.items() if v.get("shape", results["shape"]) == case_shape and v.get("curve")
        }
        milestones = token_milestones([v["curve"] for v in group.values()])
        if milestones:
            compared[case_shape] = {
                "tokens": milestones,
                "loss": {k: loss_at_tokens(v["curve"], milestones) for k, v in group.items()},
            }
    if compared:
        results["loss_at_equal_tokens"] = compared


def table(results: dict) -> str:
    lines = [
        f"lorabot bench train — {results['device']}, random {results['shape']}, LoRA r={results['lora_r']}, "
        f"{results['steps']} steps ({results['warmup_steps']} warm-up)",
        f"{'case':<18} {'setup':<50} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9} "
        f"{'tok/step':>9} {'loss first→last':>17}",
    ]
    for case, r in results["cases"].items():
        title = r.get("title") or case_spec(case)["title"]
        if "error" in r:
            lines.append(f"{case:<18} {title:<50} {r['error']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        loss = f"{r['losses'][0]:.3f}→{r['losses'][-1]:.3f}" if r["losses"] else ""
        peak = f"{r['peak_mem_gib']:.2f}" if r.get("peak_mem_gib") is not None else "n/a"
        per_step = f"{r['real_tokens_per_step']:,}" if r.get("real_tokens_per_step") else ""
        lines.append(
            f"{case:<18} {title[:50]:<50} {r['tokens_per_s']:>10,.0f} {mfu:>7} {peak:>9} "
            f"{per_step:>9} {loss:>17}"
        )
    for key, label in (
        ("a_over_b", "(a)/(b)"),
        ("c_over_a", "(c)/(a)"),
        ("d_over_a", "(d)/(a)"),
        ("d_over_c", "(d)/(c)"),
        ("f_over_e", "(f)/(e)"),
    ):
        if key in results:
            lines.append(f"{label} tokens/s: {results[key]:.2f}x")
    for case_shape, block in results.get("loss_at_equal_tokens", {}).items():
        lines.append(
            f"loss at equal real tokens seen ({case_shape}; mean over the steps ending in each window):"
        )
        lines.append(f"{'case':<18} " + " ".join(f"{'≤' + format(t, ','):>11}" for t in block["tokens"]))
        for case, values in block["loss"].items():
            lines.append(
                f"{case:<18} " + " ".join(f"{v:>11.3f}" if v is not None else f"{'':>11}" for v in values)
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command
def bench_train(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    cases: Annotated[
        str,
        typer.Option(
            help="Comma list: a (Unsloth, notebook), b (hf), c (lorabot tuned), d (lorabot fast), "
            "e/f (3B improved: notebook / fast); lever:NAME for (c) with one change, "
            "or `levers` for (c) and all of them."
        ),
    ] = "a,b,c,d,e,f",
    steps: Annotated[
        int, typer.Option(help="Optimizer steps per case (the first max(3, steps/4) are warm-up).")
    ] = 12,
    conversations: Annotated[int, typer.Option(help="Synthetic conversations in the pool.")] = 2000,
    shape: Annotated[
        str, typer.Option(help="Random-weight model shape (cases e/f are always 3B).")
    ] = "llama-3.2-1b",
    lora_r: Annotated[int, typer.Option(help="LoRA rank (cases e/f: 16, as the improved preset).")] = 16,
    profile: Annotated[
        bool, typer.Option(help="Profile the 2 steps before the timed ones: top kernels, GPU busy.")
    ] = False,
    case_timeout: Annotated[float, typer.Option(help="Seconds one case may take (0: no limit).")] = 0,
    partial: Annotated[
        Path | None, typer.Option(help="Append each case's result to this JSONL file as it ends.")
    ] = None,
) -> None:
    """GPU: tokens/s, MFU, peak memory and loss at equal tokens of the notebook, HF and lorabot's presets."""
    unknown = [
        case for case in cases.split(",") if case != "levers" and case not in CASES and case not in LEVERS
    ]
    if unknown:
        Console(stderr=True).print(
            f"[red]error:[/red] unknown case(s) {', '.join(unknown)}; choose from "
            f"{', '.join([*CASES, *LEVERS, 'levers'])}"
        )
        raise typer.Exit(2)
    try:
        main(
            json_output=json_output,
            cases=cases.split(","),
            steps=steps,
            conversations=conversations,
            shape=shape,
            lora_r=lora_r,
            profile=profile,
            case_timeout=case_timeout or None,
            partial=partial,
        )
    except TrainingError as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


CHILD = "--child"  # `python -m bench.train --child CASE ...`: one case, in its own process (see main)

if __name__ == "__main__":
    if sys.argv[1:2] == [CHILD]:
        case, data, steps, shape, lora_r, tmp, out_file, profile_flag = sys.argv[2:10]
        result = run_case(
            case, Path(data), int(steps), shape, int(lora_r), Path(tmp), profile=profile_flag == "1"
        )
        Path(out_file).write_text(json.dumps(result))
    else:  # `python -m bench.train [--json] [--steps N] ...`: the command without the bot installed
        typer.run(bench_train)
