"""The `lorabot` command as a user runs it (a real subprocess, the real embedded model)."""

from __future__ import annotations

import asyncio
import getpass
import os
import subprocess
import sys
from pathlib import Path

LORABOT = [sys.executable, "-m", "lorabot"]
ROOT = Path(__file__).resolve().parents[1]


def lorabot(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("LORABOT_", "DISCORD_", "TELEGRAM_"))
    }
    environment.update({"LORABOT_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run(
        [*LORABOT, *args],
        cwd=tmp_path,
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def stored_history(tmp_path: Path) -> list[dict]:
    """The terminal conversation as the core stored it (what the model was asked and answered)."""
    from core.history import ConversationStore

    async def read() -> list[dict]:
        store = ConversationStore(tmp_path / "data" / "history.sqlite3")
        try:
            return await store.recent(f"console:{getpass.getuser()}", 10)
        finally:
            await store.close()

    return asyncio.run(read())


def test_chat_once_answers_and_exits_zero(tmp_path):
    question = "Say hello in one short sentence."
    result = lorabot(tmp_path, "chat", "--once", question, env={"LORABOT_MAX_NEW_TOKENS": "24"})
    assert result.returncode == 0, result.stderr
    stored = stored_history(tmp_path)
    assert [message["role"] for message in stored] == ["user", "assistant"]
    assert stored[0]["content"] == question
    answer = stored[1]["content"].strip()
    assert answer and result.stdout.strip() == answer  # what was printed is the model's whole answer


def test_chat_unknown_model_lists_valid_ones(tmp_path):
    result = lorabot(tmp_path, "chat", "--model", "nope", "--once", "hi")
    assert result.returncode == 1
    assert "Unknown model 'nope'" in result.stdout and "smollm2-135m" in result.stdout


def test_bad_setting_names_the_setting(tmp_path):
    result = lorabot(tmp_path, "models", env={"LORABOT_QUEUE_MAX": "lots"})
    assert result.returncode == 2
    assert "LORABOT_QUEUE_MAX" in result.stdout


def test_models_lists_the_embedded_model_and_added_ones(tmp_path, embedded_gguf):
    added = lorabot(tmp_path, "models", "add", "copy", str(embedded_gguf), "--description", "same file")
    assert added.returncode == 0, added.stdout + added.stderr
    listed = lorabot(tmp_path, "models", env={"COLUMNS": "250"})
    assert listed.returncode == 0
    assert "smollm2-135m" in listed.stdout and "copy" in listed.stdout and "MiB" in listed.stdout


def test_run_without_tokens_opens_terminal_chat(tmp_path):
    script = "/models\n/model nope\n/help\nHi there\n/reset\n/quit\n"
    result = lorabot(tmp_path, "run", stdin=script, env={"LORABOT_MAX_NEW_TOKENS": "16"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "terminal chat" in out
    assert "Unknown model 'nope'" in out and "/reset" in out and "Forgot this conversation" in out
    assert out.count("bot> ") == 1


def test_run_with_unavailable_adapter_settings_is_clear(tmp_path):
    result = lorabot(tmp_path, "telegram", env={"TELEGRAM_TOKEN": ""})
    assert result.returncode == 2
    assert "TELEGRAM_TOKEN is not set" in result.stdout


def test_bench_engine_json_reports_every_ratio(tmp_path):
    import json

    # the llama-server side is measured only where a binary was built (never in CI): leave it out
    no_server = {"LLAMA_SERVER_BIN": str(tmp_path / "no-llama-server")}
    result = lorabot(
        tmp_path,
        "bench",
        "engine",
        "--json",
        "--turns",
        "2",
        "--conversations",
        "2",
        "--max-tokens",
        "8",
        env=no_server,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("core_vs_raw", "ttft_turn10_vs_turn1", "ttft_interleaved_vs_turn1", "concurrency_ratio"):
        assert report[key] > 0
    assert report["model"] == "smollm2-135m" and isinstance(report["targets_met"], bool)
