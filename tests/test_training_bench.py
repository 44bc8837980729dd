"""`lorabot bench train` logic on a CPU: a toy Llama through the same case code (the GPU run
itself is in docs/benchmarks.md; CUDA-only tests skip cleanly here)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")

from bench.train import CASES, lora_step_flops, matmul_params, run_case, table  # noqa: E402
from training.data.synthetic import synthetic_conversations  # noqa: E402
from training.base_model import LLAMA_COMMON, LLAMA_SHAPES  # noqa: E402


def test_flop_count_of_llama_3_2_1b():
    from transformers import LlamaConfig

    config = LlamaConfig(**LLAMA_SHAPES["llama-3.2-1b"], **LLAMA_COMMON)
    assert 1.23e9 < matmul_params(config) < 1.24e9  # 0.97B in the blocks + 0.26B lm_head
    assert lora_step_flops(config, [1000]) > 4 * matmul_params(config) * 1000


def test_synthetic_lengths_are_spread_like_finetome():
    rows = synthetic_conversations(500)
    words = sorted(sum(len(t["value"].split()) for t in r["conversations"]) for r in rows)
    assert words[len(words) // 2] > 250 and words[-1] > 1000 and words[0] < 100


@pytest.mark.slow
@pytest.mark.parametrize("case", ["c"])  # packed + padding-free: the path with the most bookkeeping
def test_bench_case_runs_on_a_toy_model(case, tmp_path, monkeypatch):
    monkeypatch.setenv("LORABOT_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in synthetic_conversations(120)))
    result = run_case(case, data, steps=4, shape="llama-test", lora_r=4, out=tmp_path, backend="hf", max_seq_length=96)
    assert result["tokens_per_s"] > 0 and result["real_tokens"] > 0 and len(result["losses"]) == 4
    assert result["packing"] == CASES[case]["packing"]
    print(table({"device": "CPU", "shape": "llama-test", "lora_r": 4, "steps": 4, "warmup_steps": 3,
                 "cases": {case: {**result, "mfu": None}}}))


@pytest.mark.gpu
def test_bench_train_on_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from bench.train import main

    results = main(json_output=True, cases=["b"], steps=5, conversations=200)
    assert results["cases"]["b"]["tokens_per_s"] > 0
