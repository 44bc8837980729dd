"""The seed's real training inputs, loaded the way a user with internet loads them, from a fake
Hugging Face Hub on loopback: `load_dataset("mlabonne/FineTome-100k")` (a FineTome-shaped parquet
with malformed rows), `from_pretrained("unsloth/Llama-3.2-1B-Instruct")` (a tiny Llama with a real
tokenizer and chat template), then `--push-to-hub` of the adapter and the GGUF.

The CLI runs in a subprocess with HF_ENDPOINT set (huggingface_hub, datasets and transformers read
it at import time), once per session; the tests then read what it left: the run folder, its
summary, and what the fake Hub received. Uploads use Git LFS (HF_HUB_DISABLE_XET=1): the fake has
no Xet store.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from fake_hub import FakeHub  # noqa: E402
from fake_hub.seed_repos import (  # noqa: E402
    BAD_ROWS,
    FINETOME_CARD,
    FINETOME_FILE,
    FINETOME_REPO,
    LLAMA_REPO,
    TOO_LONG,
    TRUNCATED,
    finetome_table,
    good_rows,
    llama_tokenizer,
    repo_files,
    write_finetome,
    write_tiny_llama,
)

from training.conversations import load_conversations  # noqa: E402

pytestmark = pytest.mark.slow
TOKEN = "hf_fake_write_token_0123456789"
PUSH_REPO = "tester/llama-finetome-lora"
MAX_SEQ = 256
CPU_CONFIG = f"""# the baseline preset as it runs on a CPU: no 4-bit (CUDA only), a few steps
load_in_4bit = false
max_seq_length = {MAX_SEQ}
batch_size = 2
grad_accum = 1
warmup_steps = 0
save_steps = 2
eval_fraction = 0.1
max_eval_samples = 4
"""


def hub_env(hub: FakeHub, home: Path, token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "LORABOT_DATA_DIR": str(home / "data"),
        "COLUMNS": "200",
    }
    if token:
        env["HF_TOKEN"] = token
    return env


def lorabot(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lorabot", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    seed = tmp_path_factory.mktemp("seed-repos")
    parquet = write_finetome(seed / "finetome" / FINETOME_FILE)
    llama = write_tiny_llama(seed / "llama")
    with FakeHub(token=TOKEN) as fake:
        fake.add_repo(
            FINETOME_REPO, {"README.md": FINETOME_CARD, FINETOME_FILE: parquet}, repo_type="dataset"
        )
        fake.add_repo(LLAMA_REPO, repo_files(llama))
        yield fake
        assert fake.unhandled == [], f"requests the fake hub does not know: {fake.unhandled}"


@pytest.fixture(scope="session")
def seed_run(hub, tmp_path_factory):
    """`lorabot train --preset baseline --dataset mlabonne/FineTome-100k --base-model unsloth/...`."""
    home = tmp_path_factory.mktemp("seed-run")
    (home / "cpu.toml").write_text(CPU_CONFIG)
    out = home / "run"
    done = lorabot(
        hub_env(hub, home),
        "train",
        "--preset",
        "baseline",
        "--dataset",
        FINETOME_REPO,
        "--base-model",
        LLAMA_REPO,
        "--config",
        str(home / "cpu.toml"),
        "--max-steps",
        "2",
        "--output",
        str(out),
        "--push-to-hub",
        PUSH_REPO,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return home, out, done


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_seed_command_trains_on_the_hub_dataset_and_base(seed_run, hub):
    _, out, _ = seed_run
    record = json.loads((out / "run.json").read_text())
    assert record["base"] == LLAMA_REPO and record["config"]["dataset"] == FINETOME_REPO
    assert (
        record["config"]["lora_r"] == 8 and record["config"]["chat_template"] == "llama-3.1"
    )  # the baseline preset
    assert record["result"]["train_loss"] > 0 and (out / "adapter" / "adapter_config.json").is_file()
    assert hub.requests_for(f"/datasets/{FINETOME_REPO}/resolve/", "GET")  # the parquet came from the hub
    assert hub.requests_for(f"/{LLAMA_REPO}/resolve/main/model.safetensors", "GET")
    saved = json.loads((out / "adapter" / "tokenizer_config.json").read_text())
    assert (
        saved["eos_token"] == "<|eot_id|>" and saved["bos_token"] == "<|begin_of_text|>"
    )  # the base's own tokenizer


def test_malformed_rows_are_counted_by_kind_and_reported_not_fatal(seed_run):
    _, out, done = seed_run
    result = json.loads((out / "run.json").read_text())["result"]
    assert result["bad_rows"] == {kind: 1 for kind in BAD_ROWS} | {"too_long": 1}
    assert result["truncated_rows"] == 1 and result["skipped_rows"] == 5
    log = " ".join(done.stderr.split())
    assert f"4 bad row(s) skipped in {FINETOME_REPO}: " in log and "1 unknown role, " in log
    assert f"longer than max_seq_length={MAX_SEQ} tokens: 1 truncated, 1 dropped" in log


def test_push_to_hub_uploads_the_adapter_and_the_gguf(seed_run, hub):
    _, out, done = seed_run
    pushed = hub.repo(PUSH_REPO)
    files = pushed.files_at("main")[1]
    for name in ("adapter_config.json", "adapter_model.safetensors", "model-q4_k_m.gguf"):
        local = out / ("adapter" if not name.endswith(".gguf") else "") / name
        assert files[name].sha256 == sha256(local.read_bytes()), name
    assert (
        files["adapter_model.safetensors"].lfs and files["model-q4_k_m.gguf"].lfs
    )  # through the LFS batch API
    assert f"base_model: {LLAMA_REPO}" in files["README.md"].read().decode()  # lorabot's card, not peft's
    assert "same file in the same commit" not in done.stderr
    writes = hub.requests_for(PUSH_REPO, "POST")
    assert writes and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in writes)
    assert TOKEN not in done.stdout + done.stderr


def test_the_pushed_gguf_pulls_back_into_the_registry_and_loads(seed_run, hub, tmp_path):
    from llama_cpp import Llama

    _, out, _ = seed_run
    done = lorabot(hub_env(hub, tmp_path), "models", "pull", PUSH_REPO, "--name", "finetome-tune")
    assert done.returncode == 0, done.stdout + done.stderr
    local = tmp_path / "data" / "models" / PUSH_REPO.replace("/", "--") / "model-q4_k_m.gguf"
    assert sha256(local.read_bytes()) == sha256((out / "model-q4_k_m.gguf").read_bytes())
    model = Llama(str(local), n_ctx=64, verbose=False)
    header = model.tokenize(b"<|start_header_id|>user<|end_header_id|>", special=True, add_bos=False)
    assert len(header) == 3  # Llama 3's header markers stayed single special tokens through export


def test_push_without_or_with_a_wrong_token_fails_before_any_work(seed_run, hub):
    home, out, _ = seed_run
    missing = lorabot(hub_env(hub, home, token=None), "export", str(out), "--push-to-hub", "tester/other")
    assert missing.returncode == 2 and "set HF_TOKEN" in missing.stderr
    wrong = lorabot(
        hub_env(hub, home, token="hf_not_the_right_one_42"),
        "export",
        str(out),
        "--push-to-hub",
        "tester/other",
    )
    assert wrong.returncode == 2 and "refused the token in HF_TOKEN" in wrong.stderr
    assert "hf_not_the_right_one_42" not in wrong.stdout + wrong.stderr
    assert ("model", "tester/other") not in hub.repos


def test_a_missing_hub_dataset_is_a_clear_error(hub, tmp_path):
    code = "from training.conversations import load_conversations; load_conversations('nobody/no-such-data')"
    done = subprocess.run(
        [sys.executable, "-c", code], env=hub_env(hub, tmp_path), capture_output=True, text=True
    )
    assert done.returncode != 0 and "could not load hub dataset 'nobody/no-such-data'" in done.stderr


# ---- the same rows from a local file, one kind at a time (no model needed) ------------------------
@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_each_kind_of_malformed_row_is_counted(kind, tmp_path):
    path = write_finetome(tmp_path / "ft.parquet", good=6, bad={kind: BAD_ROWS[kind]}, long_rows=False)
    loaded = load_conversations(str(path))
    assert len(loaded.conversations) == 6 and loaded.bad_rows == Counter({kind: 1}) and loaded.skipped == 1
    assert loaded.reasons[0].startswith("row 6: ")


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ('{"conversations": [{"from": "human", "value": "hi"}', "unreadable"),
        ('{"text": "a pretraining row, not a chat"}', "not_a_conversation"),
    ],
)
def test_jsonl_only_kinds_are_counted_too(line, kind, tmp_path):
    good = [json.dumps({"conversations": c}) for c in good_rows(3)]
    (tmp_path / "rows.jsonl").write_text("\n".join([*good, line]) + "\n")
    loaded = load_conversations(str(tmp_path / "rows.jsonl"))
    assert len(loaded.conversations) == 3 and loaded.bad_rows == Counter({kind: 1})


@pytest.mark.parametrize(
    ("conversation", "expected"), [(TOO_LONG, {"too_long": 1}), (TRUNCATED, {"truncated": 1})]
)
def test_over_long_conversations_are_dropped_or_truncated_and_counted(conversation, expected):
    from training.chat_format import IGNORE_INDEX, encode_all
    from training.conversations import standardize

    tokenizer = llama_tokenizer()
    rows = [standardize({"conversations": c}) for c in good_rows(3) + [conversation]]
    dataset, counts = encode_all(tokenizer, rows, MAX_SEQ)
    assert counts == Counter(expected)
    assert len(dataset) == 4 - counts["too_long"]
    assert max(len(ids) for ids in dataset["input_ids"]) <= MAX_SEQ
    assert all(any(label != IGNORE_INDEX for label in labels) for labels in dataset["labels"])


def test_finetome_table_has_the_real_columns():
    table = finetome_table(good_rows(2))
    assert table.column_names == ["conversations", "source", "score"]
    assert str(table.schema.field("conversations").type) == "list<item: struct<from: string, value: string>>"
