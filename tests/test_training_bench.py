"""`lorabot bench train` logic on a CPU: a toy Llama through the same case code (the GPU run
itself is in docs/benchmarks.md; CUDA-only tests skip cleanly here)."""

from __future__ import annotations

import itertools
import json

import pytest

pytest.importorskip("trl")

from bench.train import (  # noqa: E402
    CASES,
    LEVERS,
    STEP_KEYS,
    case_spec,
    case_steps,
    expand_cases,
    lora_step_flops,
    loss_at_tokens,
    matmul_params,
    run_case,
    table,
    token_milestones,
)
from training.base_model import LLAMA_COMMON, LLAMA_SHAPES  # noqa: E402
from training.data.synthetic import synthetic_conversations  # noqa: E402


def test_flop_count_of_llama_3_2_1b():
    from transformers import LlamaConfig

    config = LlamaConfig(**LLAMA_SHAPES["llama-3.2-1b"], **LLAMA_COMMON)
    assert 1.23e9 < matmul_params(config) < 1.24e9  # 0.97B in the blocks + 0.26B lm_head
    assert lora_step_flops(config, [1000]) > 4 * matmul_params(config) * 1000


def test_synthetic_lengths_are_spread_like_finetome():
    rows = synthetic_conversations(500)
    words = sorted(sum(len(t["value"].split()) for t in r["conversations"]) for r in rows)
    assert words[len(words) // 2] > 250 and words[-1] > 1000 and words[0] < 100


def test_loss_is_compared_at_equal_real_tokens_not_steps():
    # (x) sees 1,000 real tokens per step, (y) 4,000: at step 2 (y) is 4x further into the data.
    x = [[1000 * k, 10.0 - k] for k in range(1, 17)]
    y = [[4000 * k, 10.0 - 4 * k + 0.5] for k in range(1, 5)]
    milestones = token_milestones([x, y], count=4)
    assert milestones == [4000, 8000, 12000, 16000]
    assert loss_at_tokens(x, milestones) == [7.5, 3.5, -0.5, -4.5]  # mean of the 4 steps in each window
    assert loss_at_tokens(y, milestones) == [6.5, 2.5, -1.5, -5.5]
    assert loss_at_tokens(x, [500]) == [None]  # no step ended in that window


def test_every_case_and_lever_is_a_valid_training_config():
    from training.config import build_config

    assert set(expand_cases(["levers"])) == {"c", *LEVERS}
    rows_per_step = {}
    for name in [*CASES, *LEVERS]:
        spec = case_spec(name)
        settings = {key: spec[key] for key in STEP_KEYS if key in spec}
        cfg = build_config("baseline", backend=spec["backend"], **settings)  # ConfigError if not valid
        rows_per_step[name] = (cfg.batch_size, cfg.grad_accum)
    assert rows_per_step["a"] == rows_per_step["b"] == rows_per_step["e"] == (2, 4)  # the notebook's
    assert rows_per_step["c"] == rows_per_step["d"] == rows_per_step["f"] == (8, 1)  # baseline-tuned / -fast
    assert rows_per_step["lever:mb16"] == (16, 1) and rows_per_step["lever:bf16-mb64"] == (64, 1)
    assert case_spec("lever:bf16")["load_in_4bit"] is False and case_spec("c")["load_in_4bit"] is True
    assert (
        case_spec("f")["shape"] == "llama-3.2-3b"
        and case_spec("f")["batch_size"] == case_spec("d")["batch_size"]
    )


def test_the_fast_preset_optimises_as_the_tuned_one_does():
    # Same rows per step, lr and schedule: its loss at equal real tokens is (c)'s (docs/benchmarks.md)
    tuned, fast = case_spec("c"), case_spec("d")
    for key in ("batch_size", "grad_accum", "learning_rate", "warmup_steps", "packing"):
        assert fast[key] == tuned[key], key
    assert (
        fast["varlen_attention"] is True
        and fast["load_in_4bit"] is False
        and tuned.get("varlen_attention") is None
    )
    assert case_steps(fast, 40) == case_steps(case_spec("f"), 40) == 40


def test_a_case_with_twice_the_tokens_per_step_runs_half_the_steps():
    wide = case_spec("lever:bf16-mb16-varlen-lr")
    assert wide["batch_size"] == 2 * case_spec("c")["batch_size"] and case_steps(wide, 40) == 20


@pytest.mark.slow
@pytest.mark.parametrize("case", ["c"])  # packed + padding-free: the path with the most bookkeeping
def test_bench_case_runs_on_a_toy_model(case, tmp_path, monkeypatch):
    monkeypatch.setenv("LORABOT_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in synthetic_conversations(120)))
    result = run_case(
        case, data, steps=4, shape="llama-test", lora_r=4, out=tmp_path, backend="hf", max_seq_length=96
    )
    assert result["tokens_per_s"] > 0 and result["real_tokens"] > 0 and len(result["losses"]) == 4
    assert result["packing"] == CASES[case]["packing"]
    # every real token counted once, from the collator (no GPU sync), and placed on the curve
    assert result["lengths_from_batch"] == 0
    tokens = [point[0] for point in result["curve"]]
    assert len(tokens) == 4 and all(later > earlier for earlier, later in itertools.pairwise(tokens))
    assert tokens[-1] - tokens[-2] == result["real_tokens"]  # 4 steps, 3 warm-up: the timed window is step 4
    print(
        table(
            {
                "device": "CPU",
                "shape": "llama-test",
                "lora_r": 4,
                "steps": 4,
                "warmup_steps": 3,
                "cases": {case: {**result, "mfu": None}},
            }
        )
    )


@pytest.mark.gpu
def test_bench_train_on_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from bench.train import main

    results = main(json_output=True, cases=["b"], steps=5, conversations=200)
    assert results["cases"]["b"]["tokens_per_s"] > 0
