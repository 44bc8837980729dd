"""The Unsloth path on CUDA (skipped cleanly elsewhere; CI has no GPU). The same run was made by
hand on an H200: docs/benchmarks.md, "Training (GPU)"."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="needs unsloth"),
]


def test_baseline_configuration_trains_with_unsloth_and_exports(tmp_path):
    from training.config import build_config
    from training.export import export_run
    from training.run import train

    cfg = build_config(
        "baseline",
        base_model="random:llama-3.2-1b",
        dataset="builtin:train",
        eval_dataset="builtin:heldout",
        max_steps=4,
        eval_steps=None,
        max_eval_samples=16,
        output_dir=tmp_path / "run",
    )
    result = train(cfg, progress=False)
    assert result.backend == "unsloth" and result.dtype in {"bf16", "fp16"}
    assert result.eval_loss_after < result.eval_loss_before
    exported = export_run(tmp_path / "run", "q4_k_m")
    assert exported.f16_gguf.stat().st_size > 1_000_000_000


def test_the_fast_preset_runs_packed_attention_through_torch_varlen_and_learns(tmp_path):
    """`baseline-fast` (16-bit base + varlen_attention): the self-check against per-document SDPA
    passes on this GPU, so attention runs once per layer, and a short run still learns."""
    from training.backends.unsloth_backend import use_torch_varlen
    from training.config import build_config
    from training.run import train

    assert use_torch_varlen().startswith(("on ", "already on"))
    cfg = build_config(
        "baseline-fast",
        base_model="random:llama-3.2-1b",
        dataset="builtin:train",
        eval_dataset="builtin:heldout",
        max_steps=4,
        eval_steps=None,
        max_eval_samples=16,
        output_dir=tmp_path / "run",
    )
    assert cfg.varlen_attention and not cfg.load_in_4bit
    result = train(cfg, progress=False)
    assert result.backend == "unsloth"
    assert result.eval_loss_after < result.eval_loss_before
