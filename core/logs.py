"""Logging for a server process: configured once by the CLI, secrets redacted everywhere.

Every secret a settings class loads (bot tokens, webhook secrets, API keys) is registered here
by `core.settings.load_settings`; the formatter replaces them in the final text of every record,
tracebacks included (httpx/aiohttp errors quote the Telegram URL, which holds the token).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO

_secrets: set[str] = set()
_lock = threading.Lock()
REDACTED = "<redacted>"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def register_secret(value: str | None) -> None:
    """Never show `value` in a log line (short values are too likely to be ordinary words)."""
    if value and len(value) >= 8:
        with _lock:
            _secrets.add(value)
            # a Telegram token's secret half also appears alone in some URLs and errors
            if ":" in value and len(value.split(":", 1)[1]) >= 8:
                _secrets.add(value.split(":", 1)[1])


def redact(text: str) -> str:
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFormatter(logging.Formatter):
    """A plain formatter whose output, message and traceback alike, never holds a secret."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """One handler on the root logger (stderr by default), redacting; quiet chatty libraries."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_lorabot", False):
            root.removeHandler(old)
    handler._lorabot = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO (the Telegram URL holds the token): warnings only.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("discord.gateway").setLevel(max(root.level, logging.INFO))
