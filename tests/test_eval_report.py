"""`lorabot eval` end to end on the embedded model and a tiny fine-tune of it: every report field,
report.md, a valid tradeoff.png and a judged comparison. Short answers and few prompts keep it quick.
"""

from __future__ import annotations

import json
import math

import pytest

from core.registry import ModelRegistry
from core.settings import load_core_settings
from training.evaluate.runner import EvalOptions, run_eval

pytestmark = pytest.mark.slow

MODEL_FIELDS = {
    "name",
    "path",
    "file_size_mib",
    "load_s",
    "rss_after_load_mib",
    "rss_model_mib",
    "ttft_s",
    "decode_tok_s",
    "answers",
    "per_prompt",
    "empty_answers",
    "heldout_loss",
    "perplexity",
    "heldout_tokens",
    "heldout_truncated",
}


@pytest.fixture(scope="module")
def tiny_tune(tmp_path_factory):
    """A 2-step `tiny` LoRA fine-tune of the embedded model, merged and exported to q4_k_m."""
    pytest.importorskip("torch")
    pytest.importorskip("trl")
    from training.config import build_config
    from training.export import export_run
    from training.run import train

    out = tmp_path_factory.mktemp("tiny-tune")
    cfg = build_config(
        "tiny", output_dir=out, max_steps=2, batch_size=2, max_train_samples=16, max_eval_samples=2
    )
    train(cfg, progress=False)
    return export_run(out, "q4_k_m").quant_gguf


@pytest.fixture(scope="module")
def report(tiny_tune, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    models_file = root / "models.toml"
    ModelRegistry(models_file).add("tiny-tune", tiny_tune)
    prompts = root / "prompts.txt"
    prompts.write_text("Explain recursion to a 5 year old.\nWhat is 2 + 2?\n", encoding="utf-8")
    settings = load_core_settings(data_dir=root / "data", models_file=models_file, threads=1)
    options = EvalOptions(
        models=["smollm2-135m", "tiny-tune"],
        out_dir=root / "out",
        prompts=prompts,
        max_new_tokens=12,
        heldout_limit=4,
        judge="smollm2-135m",
        progress=False,
    )
    return run_eval(settings, options), options.out_dir


def test_report_json_has_every_field(report):
    result, out = report
    saved = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(result))
    assert [m["name"] for m in saved["models"]] == ["smollm2-135m", "tiny-tune"]
    assert saved["prompts"][0] == "Explain recursion to a 5 year old."
    for model in saved["models"]:
        assert MODEL_FIELDS <= set(model)
        assert model["file_size_mib"] > 50 and model["load_s"] > 0 and model["rss_after_load_mib"] > 0
        assert math.isfinite(model["perplexity"]) and model["perplexity"] > 1
        assert model["heldout_tokens"] > 0
        assert len(model["answers"]) == len(model["per_prompt"]) == 2
        answered = [p for p in model["per_prompt"] if p["tokens"]]
        assert answered, "no prompt was answered"
        assert model["ttft_s"]["median"] > 0 and model["ttft_s"]["low"] <= model["ttft_s"]["high"]
        assert model["decode_tok_s"]["median"] > 0
    embedded, tuned = saved["models"]
    assert embedded["heldout_loss"] != tuned["heldout_loss"]  # two different models were scored
    assert saved["tradeoff"] and "tiny-tune" in saved["tradeoff"][0] and "perplexity" in saved["tradeoff"][0]
    assert saved["settings"]["heldout_conversations"] == 4 and saved["settings"]["threads"] == 1


def test_judge_result_has_counts_and_both_orders(report):
    result, _ = report
    (pair,) = result["judge"]["pairs"]
    assert (pair["model"], pair["other"]) == ("tiny-tune", "smollm2-135m")
    assert pair["wins"] + pair["losses"] + pair["ties"] == pair["n"] == 2
    assert 0.0 <= pair["win_rate"] <= 1.0
    verdicts = [d[order] for d in pair["decisions"] for order in ("straight", "swapped")]
    assert set(verdicts) <= {"A", "B", "tie"} and len(verdicts) == 4
    assert set(verdicts) & {"A", "B"}, "the local judge never expressed a preference (logits not read?)"
    assert pair["first_position_picks"] == verdicts[::2].count("A") + verdicts[1::2].count("A")


def test_markdown_and_png(report):
    _, out = report
    markdown = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("## Summary", "## Trade-off", "## Per model", "## Judge", "## Answers", "tradeoff.png"):
        assert heading in markdown
    assert "| held-out perplexity |" in markdown and "tiny-tune" in markdown
    png = (out / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(out / "tradeoff.png") as image:
        image.verify()
        assert image.size[0] > 300 and image.size[1] > 200
