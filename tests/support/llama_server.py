"""A real llama-cpp-python server (`python -m llama_cpp.server`) on the embedded GGUF, on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.fake_openai import free_port

SERVER_CTX = 1024


class LlamaCppServer:
    """`python -m llama_cpp.server` on `model`, one thread, on a free loopback port."""

    def __init__(self, model: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
            "--port", str(self.port), "--n_ctx", str(SERVER_CTX),
            "--n_threads", "1", "--n_threads_batch", "1",
            "--interrupt_requests", "False",  # else a second request cuts the streaming one short
        ]  # fmt: skip
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["nice", "-n", "19", *command],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    def wait_ready(self, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.process.poll() is None, f"server exited: {self.log.read_text()[-2000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/models", timeout=2, trust_env=False).status_code == 200:
                    return
            time.sleep(0.1)  # polling for readiness, not proving anything
        raise AssertionError(f"server not ready: {self.log.read_text()[-2000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
