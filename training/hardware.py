"""What this machine can do, and the choices that follow (dtype, backend).

CPU runs use fp32: trl's bf16 default made a 4-step LoRA run of the 135M model take 82 s instead
of 7 s on our CPUs (no native bf16 units; the flags some VMs advertise don't help torch here).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from training.errors import HardwareError


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    device_name: str
    bf16: bool
    unsloth: bool
    bitsandbytes: bool

    @property
    def summary(self) -> str:
        extras = [name for name, ok in (("unsloth", self.unsloth), ("bitsandbytes", self.bitsandbytes)) if ok]
        return f"{self.device_name}" + (f" ({', '.join(extras)})" if extras else "")


def detect() -> Hardware:
    """Look without importing unsloth (its import patches transformers globally)."""
    import torch

    cuda = torch.cuda.is_available()
    return Hardware(
        cuda=cuda,
        device_name=torch.cuda.get_device_name(0) if cuda else "CPU",
        bf16=cuda and torch.cuda.is_bf16_supported(),
        unsloth=cuda and importlib.util.find_spec("unsloth") is not None,
        bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
    )


def pick_dtype(hw: Hardware, requested: str = "auto") -> str:
    if requested != "auto":
        if requested in {"bf16", "fp16"} and not hw.cuda:
            return "fp32"  # half precision on these CPUs is slower, never faster
        return requested
    if hw.cuda:
        return "bf16" if hw.bf16 else "fp16"
    return "fp32"


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def pick_backend(hw: Hardware, requested: str, load_in_4bit: bool, preset: str) -> str:
    """'unsloth' when CUDA and unsloth are here (or asked for), else 'hf'; clear errors otherwise."""
    if load_in_4bit and not hw.cuda:
        raise HardwareError(
            f"preset {preset!r} loads the model in 4-bit, which needs an NVIDIA GPU with CUDA; "
            "none found here. "
            "Use --preset tiny on a CPU, or run this preset on a GPU host (see docs/training.md)."
        )
    if requested == "unsloth" and not hw.unsloth:
        raise HardwareError(
            "backend 'unsloth' needs CUDA and the unsloth package"
            + ("" if hw.cuda else " (no CUDA GPU found)")
            + "; use --backend hf or install the GPU extras (training/gpu/install_wheels.sh)."
        )
    if load_in_4bit and not hw.bitsandbytes:
        raise HardwareError("4-bit loading needs bitsandbytes; install it or set load_in_4bit = false.")
    if requested == "auto":
        return "unsloth" if hw.unsloth else "hf"
    return requested
