"""`lorabot models pull` against a fake Hugging Face Hub on loopback (tests/fake_hub).

The command runs as a user runs it: a subprocess of `python -m lorabot` with HF_ENDPOINT pointing
at the fake (huggingface_hub reads it at import time), so the real huggingface_hub client does
every request. The served GGUF is the embedded SmolLM2 file itself.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from fake_hub import FakeHub

from training.errors import HubError
from training.hub import RemoteFile, pick_gguf

REPO = "bartowski/SmolLM2-135M-Instruct-GGUF"
Q4 = "SmolLM2-135M-Instruct-Q4_1.gguf"
Q8 = "SmolLM2-135M-Instruct-Q8_0.gguf"
TOKEN = "hf_fake_write_token"


def small_gguf(seed: int, size: int = 2 * 2**20) -> bytes:
    """GGUF magic and deterministic filler: enough for the download path, not for llama.cpp."""
    block = hashlib.sha256(str(seed).encode()).digest()
    return b"GGUF" + (block * (size // len(block) + 1))[: size - 4]


@pytest.fixture(scope="session")
def hub(embedded_gguf):
    with FakeHub(token=TOKEN) as fake:
        fake.add_repo(REPO, {"README.md": "# SmolLM2 GGUF\n", Q4: embedded_gguf, Q8: small_gguf(8)})
        fake.add_repo("someone/corrupt-GGUF", {"model-q4_k_m.gguf": small_gguf(1)})
        fake.add_repo("someone/private-GGUF", {"private-q4_k_m.gguf": small_gguf(2)}, private=True)
        fake.add_repo(
            "someone/split-GGUF",
            {f"big-q4_k_m-0000{i}-of-00002.gguf": small_gguf(10 + i, 2**20) for i in (1, 2)}
            | {"big-q8_0.gguf": small_gguf(12, 2**20)},
        )
        yield fake
        assert fake.unhandled == [], f"requests the fake hub does not know: {fake.unhandled}"


def pull(hub: FakeHub, data_dir: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(data_dir / "hf-home"),
        "LORABOT_DATA_DIR": str(data_dir),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "COLUMNS": "200",
        "TQDM_POSITION": "-1",
    }  # bars even without a TTY
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "lorabot", "models", "pull", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def registered(data_dir: Path) -> dict:
    models_file = data_dir / "models.toml"
    return tomllib.loads(models_file.read_text())["models"] if models_file.exists() else {}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pull_picks_the_file_downloads_it_checked_and_registers_it(hub, tmp_path, embedded_gguf):
    done = pull(hub, tmp_path, REPO, "--file", "*q4_1.gguf", "--name", "smol-hub")
    assert done.returncode == 0, done.stderr + done.stdout
    entry = registered(tmp_path)["smol-hub"]
    local = Path(entry["path"])
    assert local == (tmp_path / "models" / "bartowski--SmolLM2-135M-Instruct-GGUF" / Q4).resolve()
    assert sha256(local) == sha256(embedded_gguf)
    assert REPO in entry["description"]
    assert "smol-hub" in done.stdout and f"{Q4[-20:]}: 100%" in done.stderr  # huggingface_hub's tqdm bar
    assert not hub.requests_for(f"/resolve/{hub.repo(REPO).head}/{Q8}")  # only the chosen file was fetched

    again = pull(hub, tmp_path, REPO, "--file", "Q4_1")  # a plain word matches too; no second download
    assert again.returncode == 0, again.stderr
    assert len(hub.requests_for(f"/{Q4}", "GET")) == 1
    assert registered(tmp_path)["SmolLM2-135M-Instruct-Q4_1"]["path"] == entry["path"]


def test_an_interrupted_download_resumes_with_a_range_request(hub, tmp_path, embedded_gguf):
    hub.cut_next_download(Q4, after=30_000_000)
    done = pull(hub, tmp_path, REPO, "--file", "*q4_1*")
    assert done.returncode == 0, done.stderr
    gets = hub.requests_for(f"/{Q4}", "GET")[-2:]
    assert "range" not in gets[0].headers
    resumed_at = int(gets[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 30_000_000  # what reached the disk before the cut (it writes in 10 MiB chunks)
    assert sha256(Path(registered(tmp_path)["SmolLM2-135M-Instruct-Q4_1"]["path"])) == sha256(embedded_gguf)


def test_a_checksum_mismatch_deletes_the_file_and_registers_nothing(hub, tmp_path):
    hub.corrupt("model-q4_k_m.gguf")
    done = pull(hub, tmp_path, "someone/corrupt-GGUF")
    assert done.returncode == 2
    assert "checksum mismatch" in done.stdout and "nothing was registered" in done.stdout
    assert registered(tmp_path) == {}
    assert not list((tmp_path / "models").rglob("*.gguf"))


def test_several_ggufs_without_file_lists_them_and_downloads_nothing(hub, tmp_path):
    before = len(hub.requests_for("/resolve/"))
    done = pull(hub, tmp_path, REPO)
    assert done.returncode == 2
    assert Q4 in done.stdout and Q8 in done.stdout and "--file" in done.stdout
    none = pull(hub, tmp_path, REPO, "--file", "*q2_k*")
    assert none.returncode == 2 and "matches '*q2_k*'" in done.stdout + none.stdout
    assert len(hub.requests_for("/resolve/")) == before and registered(tmp_path) == {}


def test_split_gguf_downloads_every_shard_and_registers_the_first(hub, tmp_path):
    done = pull(hub, tmp_path, "someone/split-GGUF", "--file", "*q4_k_m*")
    assert done.returncode == 0, done.stderr
    entry = registered(tmp_path)["big-q4_k_m"]
    assert Path(entry["path"]).name == "big-q4_k_m-00001-of-00002.gguf"
    assert (Path(entry["path"]).parent / "big-q4_k_m-00002-of-00002.gguf").is_file()


def test_private_repo_needs_the_token_and_a_wrong_one_is_refused(hub, tmp_path):
    anonymous = pull(hub, tmp_path, "someone/private-GGUF")
    assert anonymous.returncode == 2 and "HF_TOKEN" in anonymous.stdout
    wrong = pull(hub, tmp_path, "someone/private-GGUF", token="hf_wrong_token_123")
    assert wrong.returncode == 2 and "refused the token" in wrong.stdout
    assert "hf_wrong_token_123" not in wrong.stdout + wrong.stderr
    good = pull(hub, tmp_path, "someone/private-GGUF", token=TOKEN)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "private-q4_k_m" in registered(tmp_path)
    resolves = hub.requests_for("/someone/private-GGUF/resolve/", "GET")
    assert resolves and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in resolves)


def test_unknown_repo_and_unreachable_hub_say_so(hub, tmp_path):
    missing = pull(hub, tmp_path, "nobody/nothing-GGUF")
    assert missing.returncode == 2 and "no model repo 'nobody/nothing-GGUF'" in missing.stdout
    bad_name = pull(hub, tmp_path, REPO, "--file", "*q4_1*", "--name", "no spaces")
    assert bad_name.returncode == 2 and "--name" in bad_name.stdout
    closed = FakeHub()  # a port nothing listens on any more
    closed.start()
    closed.stop()
    offline = pull(closed, tmp_path, REPO)
    assert offline.returncode == 2 and "cannot reach the Hub" in offline.stdout


def test_pick_gguf_groups_shards_and_matches_names_or_paths():
    files = [
        RemoteFile(p, 1, None, None)
        for p in (
            "q4/m-Q4_K_M-00001-of-00002.gguf",
            "q4/m-Q4_K_M-00002-of-00002.gguf",
            "m-Q8_0.gguf",
        )
    ]
    assert [f.path for f in pick_gguf("r", files, "*q4_k_m*")] == [files[0].path, files[1].path]
    assert [f.path for f in pick_gguf("r", files, "q8_0")] == ["m-Q8_0.gguf"]
    with pytest.raises(HubError, match="2 GGUF models: m-Q8_0.gguf, q4/m-Q4_K_M"):
        pick_gguf("r", files, None)
    with pytest.raises(HubError, match="split in 00002 files but 1 match"):
        pick_gguf("r", files, "*00001-of*")
    with pytest.raises(HubError, match="no .gguf file"):
        pick_gguf("r", [], None)
