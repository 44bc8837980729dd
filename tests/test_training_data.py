"""Fast checks of the training pipeline's front half: config, dataset loading, errors, masks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import build_config, preset_names
from training.conversations import load_conversations, split_heldout
from training.errors import BadRowError, ConfigError, DatasetError, HardwareError, OutputDirError
from training.hardware import Hardware, pick_backend, pick_dtype
from training.run import ensure_writable

CPU = Hardware(cuda=False, device_name="CPU", bf16=False, unsloth=False, bitsandbytes=False)
GPU = Hardware(cuda=True, device_name="H100", bf16=True, unsloth=True, bitsandbytes=True)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8"
    )
    return path


def test_presets_match_the_original_experiment():
    assert {"tiny", "baseline", "improved"} <= set(preset_names())
    base, big = build_config("baseline"), build_config("improved")
    assert (base.lora_r, base.lora_alpha, big.lora_r, big.lora_alpha) == (8, 16, 16, 32)
    for cfg in (base, big):
        assert cfg.target_modules == [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        assert (cfg.lora_dropout, cfg.bias, cfg.gradient_checkpointing, cfg.seed) == (
            0.0,
            "none",
            "unsloth",
            3407,
        )
        assert (cfg.max_seq_length, cfg.load_in_4bit, cfg.chat_template) == (1024, True, "llama-3.1")
        assert cfg.dataset == "mlabonne/FineTome-100k"
    assert (
        base.base_model == "unsloth/Llama-3.2-1B-Instruct"
        and big.base_model == "unsloth/Llama-3.2-3B-Instruct"
    )


def test_config_file_and_cli_overrides(tmp_path):
    toml_file = tmp_path / "run.toml"
    toml_file.write_text('preset = "tiny"\nmax_steps = 7\nlearning_rate = 5e-4\n')
    cfg = build_config(None, toml_file, max_steps=3)
    assert (cfg.preset, cfg.max_steps, cfg.learning_rate) == ("tiny", 3, 5e-4)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("lora_r: 4\nbatch_size: 2\n")
    assert build_config("tiny", yaml_file).lora_r == 4
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("huge")
    with pytest.raises(ConfigError, match="lora_r"):
        build_config("tiny", lora_r=0)
    (tmp_path / "bad.toml").write_text("max_steps = [")
    with pytest.raises(ConfigError, match="bad.toml"):
        build_config("tiny", tmp_path / "bad.toml")


def test_shipped_sample_dataset_has_disjoint_heldout_split():
    train = load_conversations("builtin:train")
    held = load_conversations("builtin:heldout")
    assert len(train.conversations) >= 300 and len(held.conversations) >= 40
    assert train.skipped == held.skipped == 0
    assert not {json.dumps(c) for c in train.conversations} & {json.dumps(c) for c in held.conversations}
    roles = {turn["role"] for conv in train.conversations for turn in conv}
    assert roles == {"system", "user", "assistant"}


def test_openai_messages_and_parquet_and_json_are_accepted(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    assert load_conversations(str(tmp_path / "a.json")).conversations[0][1] == {
        "role": "assistant",
        "content": "hello",
    }
    import pyarrow as pa
    import pyarrow.parquet as pq

    sharegpt = [{"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}]
    pq.write_table(pa.Table.from_pylist(sharegpt), tmp_path / "b.parquet")
    assert load_conversations(str(tmp_path / "b.parquet")).conversations == [
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    ]


def test_bad_rows_are_skipped_or_stop_with_row_and_reason(tmp_path):
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            good,
            {"text": "not a conversation"},
            {"conversations": [{"from": "human", "value": "only a question"}]},
            "{broken json",
            {"conversations": [{"from": "alien", "value": "?"}, {"from": "gpt", "value": "!"}]},
            good,
        ],
    )
    loaded = load_conversations(str(path), on_bad_row="skip")
    assert len(loaded.conversations) == 2 and loaded.skipped == 4
    assert "row 1" in loaded.reasons[0] and "conversations" in loaded.reasons[0]
    assert any("no assistant turn" in reason for reason in loaded.reasons)
    with pytest.raises(BadRowError) as info:
        load_conversations(str(path), on_bad_row="error")
    assert info.value.row == 1 and "row 1 is not a conversation" in str(info.value)


def test_missing_or_empty_dataset_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="dataset not found: .*nope.jsonl"):
        load_conversations(str(tmp_path / "nope.jsonl"))
    write_jsonl(tmp_path / "empty.jsonl", [{"text": "x"}])
    with pytest.raises(DatasetError, match="no usable conversation"):
        load_conversations(str(tmp_path / "empty.jsonl"))
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="local .json/.jsonl/.parquet"):
        load_conversations("someone/not-here-offline")


def test_split_is_deterministic():
    convs = [
        [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "ok"}] for i in range(100)
    ]
    assert split_heldout(convs, 0.1, 1) == split_heldout(convs, 0.1, 1)
    train, held = split_heldout(convs, 0.1, 1)
    assert len(held) == 10 and len(train) == 90


def test_hardware_choices_and_errors():
    assert pick_dtype(CPU) == "fp32" and pick_dtype(CPU, "bf16") == "fp32" and pick_dtype(GPU) == "bf16"
    with pytest.raises(HardwareError, match="needs an NVIDIA GPU.*--preset tiny"):
        pick_backend(CPU, "auto", load_in_4bit=True, preset="baseline")
    with pytest.raises(HardwareError, match="unsloth"):
        pick_backend(CPU, "unsloth", load_in_4bit=False, preset="tiny")
    assert pick_backend(CPU, "auto", False, "tiny") == "hf"
    assert pick_backend(GPU, "auto", True, "baseline") == "unsloth"
    assert pick_backend(GPU, "hf", True, "baseline") == "hf"


def test_unwritable_output_dir_is_reported(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputDirError, match="not writable"):
        ensure_writable(blocker / "run")
    assert ensure_writable(tmp_path / "ok" / "run").is_dir()


def test_cli_errors_exit_cleanly_before_loading_any_model(tmp_path):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from training import cli

    app = typer.Typer()
    app.command("train")(cli.train)
    app.command("export")(cli.export)
    runner = CliRunner()
    result = runner.invoke(
        app, ["train", "--dataset", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "dataset not found" in result.output
    result = runner.invoke(app, ["export", str(tmp_path)])
    assert result.exit_code == 2 and "run.json" in result.output
    import torch

    if not torch.cuda.is_available():  # checked before any dataset download
        result = runner.invoke(app, ["train", "--preset", "baseline", "--output", str(tmp_path / "b")])
        assert (
            result.exit_code == 2
            and "needs an NVIDIA GPU" in result.output
            and "--preset tiny" in result.output
        )


def test_cli_module_imports_no_torch_and_no_bench():
    import subprocess
    import sys

    code = (
        "import sys, training.cli; print('torch' in sys.modules, 'transformers' in sys.modules, "
        "any(name == 'bench' or name.startswith('bench.') for name in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]  # training never imports the benchmarks


def test_presets_come_from_the_presets_folder(tmp_path, monkeypatch):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from training import cli, config

    assert preset_names() == [
        "baseline", "baseline-dpo", "baseline-fast", "baseline-kto", "baseline-tuned",
        "improved", "tiny", "tiny-dpo", "tiny-kto",
    ]  # fmt: skip
    # a file dropped into the folder is a preset, nothing else lists them
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "mine.toml").write_text("lora_r = 4\nmax_steps = 3\n")
    with monkeypatch.context() as patched:
        patched.setattr(config, "PRESETS_DIR", tmp_path / "presets")
        assert preset_names() == ["mine"]
        assert (build_config("mine").lora_r, build_config("mine").max_steps) == (4, 3)
    app = typer.Typer()
    app.command("train")(cli.train)
    app.command("export")(cli.export)
    runner = CliRunner()
    help_text = " ".join(runner.invoke(app, ["train", "--help"], terminal_width=400).output.split())
    assert all(name in help_text for name in preset_names())
    result = runner.invoke(app, ["train", "--preset", "nope", "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "baseline-tuned" in " ".join(result.output.split())


def test_export_refuses_early_when_the_disk_is_too_full(tmp_path):
    from training.errors import ExportError
    from training.gguf_tools import check_free_space

    check_free_space(tmp_path, 1)
    with pytest.raises(ExportError, match="not enough disk space .* GiB free, about .* GiB needed"):
        check_free_space(tmp_path, 10**18)
