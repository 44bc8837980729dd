"""`lorabot bench train`: QLoRA training throughput on one GPU, three ways, same data, same loss.

    (a) the original notebook's settings, Unsloth: micro-batch 2 x grad-accum 4, 1024 tokens, padded
    (b) the same settings, plain transformers + peft + trl
    (c) lorabot's tuned baseline (preset `baseline-tuned`): same 8 x 1024 tokens per optimizer step
        and the same loss, but padding-free packing (BFD) in one micro-batch of 8 rows, no
        recomputation, Unsloth

Model: Llama-3.2-1B's architecture with random weights (no hub needed), 4-bit NF4 base, LoRA on
q,k,v,o,gate,up,down. Data: synthetic conversations whose lengths are spread like FineTome-100k's
(log-normal, median ~420 tokens, ~15% over 1024 and truncated), so padding waste shows.

Each case runs in its own process: Unsloth patches transformers on import, so (b) must never see
it, and each peak-memory figure is that case's alone.

Reported: real (non-padding) tokens/s, MFU and peak GPU memory. MFU counts the FLOPs a LoRA step
needs: forward 2N + input-gradient backward 2N per token (N = matmul weights incl. lm_head; the
frozen base gets no weight gradients) plus causal attention, over the GPU's dense bf16 peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from training.config import PRESETS_DIR
from training.data.synthetic import synthetic_conversations
from training.errors import HardwareError, TrainingError

PRESET_C = tomllib.loads((PRESETS_DIR / "baseline-tuned.toml").read_text(encoding="utf-8"))
CASES = {
    "a": dict(title="Unsloth, notebook settings (2x4, padded)", backend="unsloth", batch_size=2, grad_accum=4,
              packing=False, padding_free=False, gradient_checkpointing="unsloth"),
    "b": dict(title="transformers+peft+trl, same settings", backend="hf", batch_size=2, grad_accum=4,
              packing=False, padding_free=False, gradient_checkpointing=True),
    "c": dict(title="lorabot tuned (8x1, packed, padding-free)", backend="unsloth", padding_free=None,
              **{key: PRESET_C[key] for key in ("batch_size", "grad_accum", "packing", "gradient_checkpointing")}),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
WARMUP = 3


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


# ----------------------------------------------------------------------------- one case (child)
def run_case(case: str, data: Path, steps: int, shape: str, lora_r: int, out: Path, backend: str | None = None,
             max_seq_length: int = 1024) -> dict:
    """Train `steps` optimizer steps with the case's settings; time steps after the warm-up.

    The trainer comes from `training.run.build_trainer`, the set-up `lorabot train` runs; only the
    timing and the count of real tokens are added here. `backend` overrides the case's (CPU tests
    run (a)/(c)'s settings through the hf backend)."""
    spec = CASES[case]
    from training.config import build_config
    from training.hardware import detect
    from training.run import build_trainer

    cfg = build_config(
        "baseline", base_model=f"random:{shape}", tokenizer=os.environ.get("LORABOT_RANDOM_TOKENIZER"),
        dataset=str(data), eval_fraction=0.0, max_eval_samples=None, lora_r=lora_r, lora_alpha=2 * lora_r,
        max_steps=steps, backend=backend or spec["backend"], batch_size=spec["batch_size"], grad_accum=spec["grad_accum"],
        packing=spec["packing"], gradient_checkpointing=spec["gradient_checkpointing"], save_steps=10**6,
        output_dir=out / f"case-{case}", export=False, chat_template="chatml", load_in_4bit=detect().cuda,
        max_seq_length=max_seq_length,
    )
    extra: dict[str, Any] = {"save_strategy": "no", "logging_steps": 1, "disable_tqdm": True,
                             "include_num_input_tokens_seen": "non_padding"}
    if spec["padding_free"] is not None:
        extra["padding_free"] = spec["padding_free"]
    setup = build_trainer(cfg, **extra)  # imports unsloth first, when it is the one
    trainer, hw = setup.trainer, setup.hw
    import torch

    seen: list[int] = []  # lengths of the real sequences each collated batch held
    collate = trainer.data_collator

    def counting_collator(examples):
        for example in examples:
            seen.extend(example.get("seq_lengths") or [len(example["input_ids"])])
        return collate(examples)

    trainer.data_collator = counting_collator
    from transformers import TrainerCallback

    marks: list[tuple[float, int]] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), len(seen), state.num_input_tokens_seen))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer.add_callback(Timer())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    warmup = max(WARMUP, steps // 4)
    (t0, n0, s0), (t1, n1, s1) = marks[warmup - 1], marks[-1]
    lengths = seen[n0:n1]
    if not lengths:  # a backend that bypassed our collator: fall back to the trainer's own count
        lengths = [cfg.max_seq_length // 2] * max(1, (s1 - s0) // (cfg.max_seq_length // 2))
    seconds = t1 - t0
    flops = lora_step_flops(setup.model.config, lengths)
    peak = peak_flops(hw.device_name)
    return {
        "case": case, "title": spec["title"], "backend": setup.backend, "device": hw.device_name,
        "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "packing": cfg.packing,
        "timed_steps": len(marks) - warmup, "real_tokens": sum(lengths), "seconds": round(seconds, 3),
        "tokens_per_s": round(sum(lengths) / seconds, 1),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "losses": [round(x, 4) for x in losses],
        "trainer_non_padding_tokens": int(s1 - s0),
    }


# ----------------------------------------------------------------------------- all cases (parent)
def main(json_output: bool = False, cases: list[str] | None = None, steps: int = 12, conversations: int = 2000,
         shape: str = "llama-3.2-1b", lora_r: int = 16) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise HardwareError("`lorabot bench train` measures GPU training: no CUDA GPU found here")
    cases = cases or list(CASES)
    from training.base_model import resolve_base

    resolve_base(f"random:{shape}", os.environ.get("LORABOT_RANDOM_TOKENIZER"))  # build once, outside the timings
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "shape": shape, "lora_r": lora_r,
                               "steps": steps, "warmup_steps": max(WARMUP, steps // 4), "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "conversations.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in synthetic_conversations(conversations)) + "\n")
        for case in cases:
            out_file = Path(tmp) / f"{case}.json"
            command = [sys.executable, "-m", "bench.train", CHILD, case, str(data), str(steps), shape, str(lora_r), tmp,
                       str(out_file)]
            proc = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
            results["cases"][case] = json.loads(out_file.read_text()) if proc.returncode == 0 else {"error": f"exit {proc.returncode}"}
    speed = {k: v.get("tokens_per_s") for k, v in results["cases"].items()}
    if speed.get("a") and speed.get("b"):
        results["a_over_b"] = round(speed["a"] / speed["b"], 2)
    if speed.get("c") and speed.get("a"):
        results["c_over_a"] = round(speed["c"] / speed["a"], 2)
    print(json.dumps(results) if json_output else table(results))
    return results


def table(results: dict) -> str:
    lines = [f"lorabot bench train — {results['device']}, random {results['shape']}, QLoRA r={results['lora_r']}, "
             f"{results['steps']} steps ({results['warmup_steps']} warm-up)",
             f"{'case':<4} {'setup':<44} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9} {'loss first→last':>17}"]
    for case, r in results["cases"].items():
        if "error" in r:
            lines.append(f"{case:<4} {CASES[case]['title']:<44} {r['error']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        loss = f"{r['losses'][0]:.3f}→{r['losses'][-1]:.3f}" if r["losses"] else ""
        peak = f"{r['peak_mem_gib']:.2f}" if r.get("peak_mem_gib") is not None else "n/a"
        lines.append(f"{case:<4} {r['title']:<44} {r['tokens_per_s']:>10,.0f} {mfu:>7} {peak:>9} {loss:>17}")
    for key, label in (("a_over_b", "(a)/(b)"), ("c_over_a", "(c)/(a)")):
        if key in results:
            lines.append(f"{label} tokens/s: {results[key]:.2f}x")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command
def bench_train(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    cases: Annotated[str, typer.Option(help="Comma list of a (Unsloth, notebook), b (hf), c (lorabot tuned).")] = "a,b,c",
    steps: Annotated[int, typer.Option(help="Optimizer steps per case (the first 3 are warm-up).")] = 12,
    conversations: Annotated[int, typer.Option(help="Synthetic conversations in the pool.")] = 2000,
    shape: Annotated[str, typer.Option(help="Random-weight model shape.")] = "llama-3.2-1b",
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
) -> None:
    """GPU: tokens/s, MFU and peak memory of Unsloth vs plain HF vs lorabot's tuned preset."""
    unknown = [case for case in cases.split(",") if case not in CASES]
    if unknown:
        Console(stderr=True).print(f"[red]error:[/red] unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
        raise typer.Exit(2)
    try:
        main(json_output=json_output, cases=cases.split(","), steps=steps, conversations=conversations,
             shape=shape, lora_r=lora_r)
    except TrainingError as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


CHILD = "--child"  # `python -m bench.train --child CASE ...`: one case, in its own process (see main)

if __name__ == "__main__":
    if sys.argv[1:2] == [CHILD]:
        case, data, steps, shape, lora_r, tmp, out_file = sys.argv[2:9]
        result = run_case(case, Path(data), int(steps), shape, int(lora_r), Path(tmp))
        Path(out_file).write_text(json.dumps(result))
    else:  # `python -m bench.train [--json] [--steps N] ...`: the command without the bot installed
        typer.run(bench_train)
