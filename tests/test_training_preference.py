"""`lorabot train --method kto|dpo` on the tiny path: the real embedded SmolLM2, real trl/peft, the
llama.cpp converter and quantizer, the models registry. Rows are shaped as `lorabot feedback
export` writes them (core/feedback_export.py). A few steps of 128 tokens each keep the file near
a minute on 2 cores; the bad inputs fail before any training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from training.config import build_config  # noqa: E402
from training.export import export_run  # noqa: E402
from training.run import train  # noqa: E402

pytestmark = pytest.mark.slow
SMALL = dict(max_seq_length=128, batch_size=2, max_steps=2, warmup_steps=0, max_eval_samples=2, save_steps=2)
SYSTEM = {"role": "system", "content": "You are lorabot. Answer clearly and briefly."}
BUILTIN = Path(__file__).parent.parent / "training" / "data" / "train.jsonl"


def pairs(count: int) -> list[tuple[list[dict], str, str]]:
    """(prompt, brief answer, padded answer) from the shipped sample conversations."""
    out = []
    for line in BUILTIN.read_text(encoding="utf-8").splitlines()[:count]:
        turns = json.loads(line)["conversations"]
        question = next(t["value"] for t in turns if t["from"] == "human")
        answer = next(t["value"] for t in turns if t["from"] == "gpt")
        padded = f"Well, let me think about that. {answer} I hope this helps, ask me anything else!"
        out.append(([SYSTEM, {"role": "user", "content": question}], answer, padded))
    return out


def say(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def kto_rows(count: int, downs: int | None = None) -> list[dict]:
    """👍 for every brief answer, 👎 for the first `downs` padded ones (all by default)."""
    rows = []
    for index, (prompt, brief, padded) in enumerate(pairs(count)):
        rows.append({"prompt": prompt, "completion": say(brief), "label": True})
        if downs is None or index < downs:
            rows.append({"prompt": prompt, "completion": say(padded), "label": False})
    return rows


def dpo_rows(count: int) -> list[dict]:
    return [{"prompt": p, "chosen": say(b), "rejected": say(r)} for p, b, r in pairs(count)]


def write(path: Path, rows: list, extra_lines: list[str] = ()) -> str:
    lines = [json.dumps(row, ensure_ascii=False) for row in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return str(path)


BAD_KTO_LINES = [
    "{not json",  # unreadable
    json.dumps(
        {"prompt": [SYSTEM, {"role": "user", "content": "Hi"}], "completion": say("Hi!"), "label": "yes"}
    ),
    json.dumps({"prompt": [{"role": "alien", "content": "Hi"}], "completion": say("Hi!"), "label": True}),
    json.dumps(
        {"prompt": [SYSTEM, {"role": "user", "content": "Hi"}], "completion": say(" "), "label": False}
    ),
    json.dumps({"prompt": [{"role": "user", "content": "Hi"}], "chosen": say("a"), "rejected": say("b")}),
    json.dumps(
        {"prompt": [{"role": "user", "content": "word " * 200}], "completion": say("ok"), "label": True}
    ),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A models file of its own (the registry `--register` writes and `--from-model` reads)."""
    folder = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORABOT_MODELS_FILE", str(folder / "models.toml"))
        patch.setenv("LORABOT_DATA_DIR", str(folder / "data"))
        yield folder / "models.toml"


@pytest.fixture(scope="module")
def kto_candidate(tmp_path_factory, registry):
    """KTO on 30 👍 / 10 👎 rows plus one bad row of each kind, exported and registered as `cand`."""
    folder = tmp_path_factory.mktemp("kto")
    dataset = write(folder / "kto.jsonl", kto_rows(30, downs=10), BAD_KTO_LINES)
    cfg = build_config(
        "tiny-kto",
        dataset=dataset,
        output_dir=folder / "run",
        register_name="cand",
        eval_fraction=0.1,
        **SMALL,
    )
    result = train(cfg, progress=False)
    exported = export_run(folder / "run", "q4_k_m", "cand", "")
    return cfg, result, exported


def cli_app():
    import typer

    from training import cli

    app = typer.Typer()
    app.command("train")(cli.train)
    app.command("export")(cli.export)  # two commands: `train` stays a subcommand, as in `lorabot train`
    return app


def run_cli(*args: str):
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli_app(), ["train", *args], terminal_width=400)
    return result, " ".join(result.output.split())


def test_kto_trains_on_exported_rows_counts_bad_ones_balances_labels_and_registers(kto_candidate, registry):
    from gguf import GGUFReader

    from core.registry import ModelRegistry

    _, result, exported = kto_candidate
    record = json.loads((result.output_dir / "run.json").read_text())
    assert record["config"]["method"] == "kto" and result.method == "kto" and result.backend == "hf"
    # one bad row of each kind, counted by kind; the over-long prompt is found once tokenized
    assert result.bad_rows == {
        "unreadable": 1,
        "bad_label": 1,
        "unknown_role": 1,
        "empty_turn": 1,
        "wrong_format": 1,
        "too_long": 1,
    }
    assert record["result"]["bad_rows"] == result.bad_rows
    prefs = result.preference
    assert prefs["desirable_rows"] > prefs["undesirable_rows"] > 0
    # the minority (👎) side is weighted into trl's advised range [1, 4/3] of the weighted ratio
    ratio = (
        prefs["desirable_weight"]
        * prefs["desirable_rows"]
        / (prefs["undesirable_weight"] * prefs["undesirable_rows"])
    )
    assert prefs["desirable_weight"] == 1.0 and 1.0 <= ratio <= 4 / 3
    assert "eval_rewards/margins" in prefs and result.eval_loss_after is not None
    logs = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logs if "loss" in row] == [1, 2]
    assert any("kl" in row for row in logs)
    assert int(GGUFReader(exported.quant_gguf).fields["general.file_type"].contents()) == 15  # q4_k_m
    entry = ModelRegistry(registry).get("cand")
    assert entry.path == exported.quant_gguf.resolve() and "KTO" in entry.description


def test_dpo_from_the_registered_candidate_through_the_cli(kto_candidate, registry, tmp_path):
    """--from-model starts from the KTO run's merged checkpoint; the rows say another model wrote
    the answers, so a warning; --register adds the result."""
    from core.registry import ModelRegistry

    rows = [{**row, "model": "smollm2-135m"} for row in dpo_rows(12)]
    config = tmp_path / "small.toml"
    config.write_text("".join(f"{key} = {value}\n" for key, value in SMALL.items()) + "eval_fraction = 0.2\n")
    result, output = run_cli(
        "--method", "dpo", "--from-model", "cand", "--config", str(config),
        "--dataset", write(tmp_path / "dpo.jsonl", rows), "--output", str(tmp_path / "run"),
        "--register", "cand-dpo",
    )  # fmt: skip
    assert result.exit_code == 0, output
    assert "starting from 'cand': run's merged checkpoint" in output
    assert (
        "warning: the rows rate answers of smollm2-135m, but this run starts from --from-model cand" in output
    )
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    kto_run = kto_candidate[1].output_dir
    assert record["config"]["preset"] == "tiny-dpo" and record["result"]["method"] == "dpo"
    assert record["base"] == str((kto_run / "merged").resolve())
    assert record["result"]["from_model"]["gguf"] == str(kto_candidate[2].quant_gguf.resolve())
    assert "eval_rewards/accuracies" in record["result"]["preference"]
    assert ModelRegistry(registry).get("cand-dpo").path == (tmp_path / "run" / "model-q4_k_m.gguf").resolve()


def test_the_reference_is_the_model_with_its_adapter_off(tmp_path):
    """No second model and no second adapter: trl gets `peft_config` and disables the adapter."""
    from training.preference import build_preference_trainer

    cfg = build_config(
        "tiny-dpo", dataset=write(tmp_path / "d.jsonl", dpo_rows(6)), output_dir=tmp_path / "r", **SMALL
    )
    setup = build_preference_trainer(cfg)
    assert setup.trainer.ref_model is None
    assert list(setup.trainer.model.peft_config) == ["default"]
    assert setup.info == {"method": "dpo", "beta": 0.1, "pairs": setup.train_rows}


def test_rows_pre_tokenized_for_this_base_reach_trl_as_its_own_tokenization(tmp_path):
    """Ids made with the base's tokenizer pass the check and skip trl's tokenizing: the trainer
    holds exactly the rows (and KL completions) it makes from the same text rows."""
    from trl.data_utils import _tokenize, common_prefix_length

    from training.base_model import load_tokenizer, resolve_base
    from training.preference import build_preference_trainer

    tokenizer = load_tokenizer(resolve_base("embedded"), "model")
    text_rows, token_rows = kto_rows(8), []
    for row in text_rows:
        prompt = _tokenize(tokenizer, row["prompt"], add_generation_prompt=True)["input_ids"]
        full = _tokenize(tokenizer, row["prompt"] + row["completion"])["input_ids"]
        cut = common_prefix_length(prompt, full)
        token_rows.append({"prompt_ids": prompt[:cut], "completion_ids": full[cut:], "label": row["label"]})
    columns = ["prompt_ids", "completion_ids", "KL_completion_ids", "label"]
    prepared = []
    for name, rows in (("text", text_rows), ("ids", token_rows)):
        cfg = build_config(
            "tiny-kto", dataset=write(tmp_path / f"{name}.jsonl", rows), output_dir=tmp_path / name, **SMALL
        )
        dataset = build_preference_trainer(cfg).trainer.train_dataset
        prepared.append([dataset[column] for column in columns])
    assert prepared[0] == prepared[1] and len(prepared[0][0]) > 0


def pre_tokenized(tmp_path: Path, name: str, remap) -> str:
    """Rows tokenized by 'another model': the base's ids sent through `remap`."""
    from trl.data_utils import _tokenize

    from training.base_model import load_tokenizer, resolve_base

    tokenizer = load_tokenizer(resolve_base("embedded"), "model")
    rows = []
    for row in kto_rows(6):
        ids = _tokenize(tokenizer, row["prompt"] + row["completion"])["input_ids"]
        rows.append(
            {
                "prompt_ids": list(map(remap, ids[:-8])),
                "completion_ids": list(map(remap, ids[-8:])),
                "label": row["label"],
            }
        )
    return write(tmp_path / f"{name}.jsonl", rows)


def test_bad_inputs_are_one_clear_error_each(tmp_path):
    permutation = list(range(49152))
    random.Random(0).shuffle(permutation)
    kto, dpo = write(tmp_path / "kto.jsonl", kto_rows(6)), write(tmp_path / "dpo.jsonl", dpo_rows(6))
    cases = [
        (
            ["--method", "kto", "--dataset", write(tmp_path / "empty.jsonl", [])],
            "is empty: no rows to train on",
        ),
        (["--method", "kto"], "a KTO run needs --dataset FILE.jsonl; lorabot feedback export --format kto"),
        (
            [
                "--method",
                "kto",
                "--dataset",
                write(tmp_path / "up.jsonl", [r for r in kto_rows(6) if r["label"]]),
            ],
            "all 6 usable rows of",
        ),
        (
            [
                "--method",
                "kto",
                "--dataset",
                write(tmp_path / "down.jsonl", [r for r in kto_rows(6) if not r["label"]]),
            ],
            "are 👎 (label false): KTO needs both 👍 and 👎 answers",
        ),
        (
            ["--method", "kto", "--dataset", dpo],
            'holds DPO pairs ({"prompt", "chosen", "rejected"}), not KTO rows',
        ),
        (
            ["--method", "dpo", "--dataset", kto],
            'holds KTO rows ({"prompt", "completion", "label"}), not DPO',
        ),
        (["--method", "sft", "--dataset", kto], "train them with --method kto"),
        (
            ["--method", "kto", "--dataset", pre_tokenized(tmp_path, "llama", lambda i: i + 80000)],
            "past the end of the base's vocabulary (49152 tokens): a dataset for another model's tokenizer",
        ),
        (
            ["--method", "kto", "--dataset", pre_tokenized(tmp_path, "shuffled", permutation.__getitem__)],
            "pre-tokenized rows do not tokenize back to the same ids with the base's tokenizer: "
            "a dataset for another model's tokenizer",
        ),
        (["--method", "kto", "--dataset", kto, "--batch-size", "1"], "KTO needs batch_size >= 2"),
        (
            ["--method", "dpo", "--dataset", dpo, "--from-model", "nope"],
            "--from-model 'nope' is not a registered model",
        ),
    ]
    for args, message in cases:
        result, output = run_cli(*args, "--output", str(tmp_path / "out"), "--no-export")
        assert result.exit_code == 2, (args, output)
        assert message in output, (args, output)
        assert "Traceback" not in output
    assert not (tmp_path / "out" / "adapter").exists()  # nothing trained


@pytest.mark.gpu
def test_kto_and_dpo_run_unslothed_on_a_gpu(tmp_path):
    """The GPU presets on the Unsloth backend (skipped without CUDA and unsloth; CI has neither):
    the 1B shape with random weights, a few steps each."""
    import importlib.util

    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("unsloth") is None:
        pytest.skip("needs CUDA and unsloth")
    for method, rows in (("kto", kto_rows(24)), ("dpo", dpo_rows(24))):
        cfg = build_config(
            f"baseline-{method}",
            base_model="random:llama-3.2-1b",
            dataset=write(tmp_path / f"{method}.jsonl", rows),
            output_dir=tmp_path / method,
            max_steps=3,
            eval_fraction=0.1,
            max_eval_samples=4,
        )
        result = train(cfg, progress=False)
        assert result.backend == "unsloth" and result.method == method and result.train_loss is not None
        assert (result.adapter_dir / "adapter_config.json").is_file()
        assert not (result.adapter_dir / "ref").exists()  # only the trained adapter is saved
