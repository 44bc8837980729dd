"""`tiny` end to end on a CPU: train a few steps → merge → GGUF f16 → q4_k_m → registry → bot.

One module-scoped run keeps the whole file at about a minute or two on 2 cores; no mocks: the
real embedded SmolLM2, real trl/peft, llama.cpp's converter and quantizer, and the core's engine.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from training.config import build_config  # noqa: E402
from training.export import export_run, merge_adapter  # noqa: E402
from training.run import train  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = 4


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-run")
    cfg = build_config(
        "tiny", output_dir=out, max_steps=STEPS, batch_size=4, eval_steps=2, save_steps=2, max_eval_samples=8
    )
    result = train(cfg, progress=False)
    exported = export_run(out, "q4_k_m")
    return cfg, result, exported


def test_training_lowers_heldout_loss_and_logs_each_step(tiny_run):
    cfg, result, _ = tiny_run
    assert result.backend == "hf" and result.dtype == "fp32"
    assert result.eval_loss_after < result.eval_loss_before
    logs = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logs if "loss" in row] == list(range(1, STEPS + 1))
    assert {2, 4} <= {row["step"] for row in logs if "eval_loss" in row}
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert (result.output_dir / "checkpoints" / f"checkpoint-{STEPS}").is_dir()
    record = json.loads((result.output_dir / "run.json").read_text())
    assert (
        record["config"]["preset"] == "tiny" and record["result"]["eval_loss_after"] == result.eval_loss_after
    )


def test_merged_model_matches_the_peft_model(tiny_run):
    import torch
    from transformers import AutoTokenizer

    _, result, _ = tiny_run
    base = json.loads((result.output_dir / "run.json").read_text())["base"]
    merged, peft_model = merge_adapter(base, result.adapter_dir, keep_peft=True)
    tokenizer = AutoTokenizer.from_pretrained(result.adapter_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 30?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        expected, got = peft_model(ids).logits, merged(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)  # logits ~10: fp32 rounding of W + BA
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    # and the adapter really changed the model
    with torch.no_grad(), peft_model.disable_adapter():
        assert (peft_model(ids).logits - expected).abs().max() > 1e-3


def test_export_writes_adapter_f16_and_q4_k_m(tiny_run):
    from gguf import GGUFReader

    _, result, exported = tiny_run
    assert exported.f16_gguf.stat().st_size > exported.quant_gguf.stat().st_size > 50_000_000
    fields = GGUFReader(exported.quant_gguf).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"  # same tokenization as the bot's base
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert int(fields["general.file_type"].contents()) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M


async def test_registered_model_is_selectable_and_answers_in_the_bot(tiny_run, tmp_path):
    from core.events import Done
    from core.service import ChatService
    from core.settings import load_core_settings
    from training.register import register_model

    _, _, exported = tiny_run
    models_file = tmp_path / "models.toml"
    register_model("tiny-tune", exported.quant_gguf, description="test tune", models_file=models_file)
    settings = load_core_settings(data_dir=tmp_path / "data", models_file=models_file, max_new_tokens=24)
    service = ChatService(settings)
    await service.start()
    try:
        assert "tiny-tune" in service.model_names()
        await service.set_model("c1", "tiny-tune")
        assert await service.current_model("c1") == "tiny-tune"
        done = [
            event
            async for event in service.reply("c1", "u1", "What is the capital of France?")
            if isinstance(event, Done)
        ]
        assert done and done[0].text.strip()
    finally:
        await service.close()


def test_resume_continues_from_the_last_checkpoint(tiny_run):
    cfg, result, _ = tiny_run
    resumed = train(
        cfg.model_copy(update={"max_steps": STEPS + 1, "eval_steps": None}), resume=True, progress=False
    )
    assert (resumed.output_dir / "checkpoints" / f"checkpoint-{STEPS + 1}").is_dir()
    steps = [
        json.loads(line)["step"] for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert STEPS + 1 in steps
