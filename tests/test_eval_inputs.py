"""`lorabot eval` inputs: prompt sets, held-out files and model names fail with clear errors."""

from __future__ import annotations

import json

import pytest
from typer import Typer
from typer.testing import CliRunner

from core.registry import ModelRegistry
from training.evaluate.cli import eval as eval_command
from training.evaluate.errors import EvalError
from training.evaluate.inputs import load_heldout, load_prompts
from training.evaluate.runner import resolve_models


def test_shipped_prompt_set_has_the_recursion_prompt():
    prompts = load_prompts()
    assert "Explain recursion to a 5 year old." in prompts
    assert all(p.strip() and not p.startswith("#") for p in prompts)


def test_prompts_from_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "One?"}\n"Two?"\n\n', encoding="utf-8")
    assert load_prompts(path) == ["One?", "Two?"]


def test_empty_prompt_set_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(EvalError, match="prompt set .* is empty"):
        load_prompts(path)


def test_default_heldout_is_the_tiny_split():
    conversations = load_heldout()
    assert len(conversations) >= 10
    assert all(any(turn["role"] == "assistant" for turn in c) for c in conversations)


def test_heldout_without_assistant_turns_is_a_clear_error(tmp_path):
    path = tmp_path / "held.jsonl"
    rows = [{"conversations": [{"from": "human", "value": "Hello?"}]}] * 3
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    with pytest.raises(EvalError, match="no conversation with an assistant turn"):
        load_heldout(path)


def test_unknown_model_lists_the_valid_ones(tmp_path, embedded_gguf):
    registry = ModelRegistry(tmp_path / "models.toml")
    registry.add("mine", embedded_gguf)
    with pytest.raises(EvalError, match=r"nope.*smollm2-135m, mine"):
        resolve_models(registry, ["smollm2-135m", "nope"])
    assert [e.name for e in resolve_models(registry, ["mine", "smollm2-135m", "mine"])] == [
        "mine",
        "smollm2-135m",
    ]


def test_cli_reports_errors_and_exits_2(tmp_path, monkeypatch):
    monkeypatch.setenv("LORABOT_DATA_DIR", str(tmp_path))
    app = Typer()
    app.command("eval")(eval_command)
    app.command("other")(lambda: None)  # two commands, so `eval` is addressed by name as in `lorabot`
    result = CliRunner().invoke(app, ["eval", "--models", "smollm2-135m,nope", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "Unknown model 'nope'" in result.output and "smollm2-135m" in result.output


def test_unknown_judge_fails_before_any_model_is_measured(tmp_path):
    from core.settings import load_core_settings
    from training.evaluate.runner import EvalOptions, run_eval

    settings = load_core_settings(data_dir=tmp_path, models_file=tmp_path / "models.toml")
    options = EvalOptions(
        models=["smollm2-135m", "smollm2-135m"], out_dir=tmp_path / "o", judge="nope", progress=False
    )
    with pytest.raises(EvalError, match="Unknown model 'nope'"):
        run_eval(settings, options)
    assert not (tmp_path / "o").exists()
