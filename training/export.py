"""`lorabot export`: LoRA adapter + base → merged HF checkpoint → GGUF f16 → q4_k_m (→ registry).

Merging happens on the CPU in fp32 against the unquantized base (never into 4-bit weights), so
the merged model computes what the adapter-wrapped model computed, up to float rounding.
"""

from __future__ import annotations

import errno
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from training.errors import ExportError, OutputDirError
from training.gguf_tools import QuantizerMissing, check_free_space, convert_to_gguf, quantize

console = Console(stderr=True)


@dataclass
class ExportResult:
    merged_dir: Path
    f16_gguf: Path
    quant_gguf: Path | None
    registered: str | None = None


def read_run(run_dir: Path) -> dict:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise ExportError(
            f"{run_dir} is not a training run folder (no run.json); pass the folder `lorabot train` wrote"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def merge_adapter(base: str, adapter_dir: Path, keep_peft: bool = False):
    """(merged model, peft model or None) in fp32 on the CPU; tests compare their logits."""
    import copy

    from peft import PeftModel

    from training.base_model import load_model

    base_model = load_model(base, "fp32")
    peft_model = PeftModel.from_pretrained(base_model, adapter_dir)
    peft_model.eval()
    merged = (copy.deepcopy(peft_model) if keep_peft else peft_model).merge_and_unload()
    merged.eval()
    return merged, peft_model if keep_peft else None


def save_merged(merged, tokenizer, out: Path) -> Path:
    import torch

    params = sum(p.numel() for p in merged.parameters())
    check_free_space(out.parent, params * 2 * 3)  # fp16 checkpoint + f16 GGUF + quantized copy
    try:
        merged.to(torch.float16).save_pretrained(out)
        tokenizer.save_pretrained(out)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            shutil.rmtree(out, ignore_errors=True)
            raise ExportError(
                f"disk full while writing {out}; free some space and run `lorabot export` again"
            ) from error
        raise
    return out


def export_run(
    run_dir: Path,
    quantization: str | None = "q4_k_m",
    register: str | None = None,
    description: str = "",
) -> ExportResult:
    """Merge, convert and quantize the adapter of a finished run; optionally register the GGUF."""
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    record = read_run(run_dir)
    adapter_dir = run_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ExportError(f"no LoRA adapter in {adapter_dir}; did training finish?")
    try:
        (run_dir / ".write-test").write_text("ok")
        (run_dir / ".write-test").unlink()
    except OSError as error:
        raise OutputDirError(
            f"output directory {run_dir} is not writable: {error.strerror or error}"
        ) from error

    console.print(f"merging {adapter_dir} into {record['base']}")
    merged, _ = merge_adapter(record["base"], adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    merged_dir = save_merged(merged, tokenizer, run_dir / "merged")
    del merged

    console.print("converting to GGUF f16 (llama.cpp converter)")
    f16 = convert_to_gguf(merged_dir, run_dir / "model-f16.gguf", "f16")
    quant = None
    if quantization:
        console.print(f"quantizing to {quantization}")
        try:
            quant = quantize(f16, run_dir / f"model-{quantization}.gguf", quantization)
        except QuantizerMissing as error:
            console.print(f"[yellow]{error}[/yellow]")
    result = ExportResult(merged_dir=merged_dir, f16_gguf=f16, quant_gguf=quant)
    if register:
        from training.register import register_model

        config = record.get("config", {})
        method = config.get("method", "sft")
        text = (
            description
            or config.get("description")
            or f"{config.get('preset', 'lorabot')} LoRA tune"
            + (f" ({method.upper()})" if method != "sft" else "")
            + f" of {config.get('from_model') or record['base']}"
        )
        register_model(register, quant or f16, description=text)
        result.registered = register
    console.print(
        f"[green]exported[/green] {quant or f16}" + (f", registered as {register!r}" if register else "")
    )
    return result
