"""Core settings, read once from the environment and `.env`, validated at start-up.

Platform adapters keep their own settings classes in `bots/` (same `.env`), so the core
never learns about Discord or Telegram.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar, get_args

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.logs import register_secret

DEFAULT_SYSTEM_PROMPT = (
    "You are lorabot, a friendly and concise assistant in a group chat. Answer clearly and briefly."
)


S = TypeVar("S", bound=BaseSettings)


class SettingsError(Exception):
    """A setting has a bad value; the message names the setting and what is wrong."""


class CoreSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LORABOT_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(
        Path("data"),
        description="Default home of the SQLite history and the models file; `lorabot models pull` "
        "downloads here.",
    )
    database_url: SecretStr | None = Field(
        None,
        description="Where history, model choices and in-flight questions are stored: "
        "postgresql://user:password@host/db for several bot processes on one database; "
        "default sqlite:///DATA_DIR/history.sqlite3.",
    )
    models_file: Path | None = Field(None, description="TOML models registry; default DATA_DIR/models.toml.")
    default_model: str = Field(
        "smollm2-135m",
        description="Model used where neither the conversation nor its channel/server picked one.",
    )
    system_prompt: str = Field(
        DEFAULT_SYSTEM_PROMPT, description="System message in front of every conversation."
    )
    queue_max: int = Field(1000, ge=1, description="Hard cap on requests waiting at once (see max_wait_s).")
    max_wait_s: float = Field(
        120.0, gt=0, description="Refuse a new request when its estimated wait in the queue exceeds this."
    )
    max_waiting_per_user: int = Field(
        3,
        ge=1,
        description="Questions one user may have waiting besides one being answered (answered in order); "
        "a further one is refused.",
    )
    rate_limit_messages: int = Field(
        6, ge=1, description="Questions a user may ask per period (all conversations); more are refused."
    )
    rate_limit_period_s: float = Field(60.0, gt=0, description="That period, in seconds (a sliding window).")
    history_max_turns: int = Field(
        20,
        ge=1,
        description="Most past exchanges read into the model's context (fewer when they do not fit); "
        "the store keeps every turn until history_keep_days.",
    )
    history_keep_days: float = Field(
        30,
        ge=0,
        description="Stored turns older than this are deleted (at start, then at most hourly); "
        "0 = keep forever.",
    )
    max_input_chars: int = Field(4000, ge=100, description="Longer messages are trimmed with a notice.")
    feedback: bool = Field(
        True,
        description="Store 👍/👎 ratings and regenerated answers (docs/privacy.md); off: the bot ignores "
        "reactions, shows no rating buttons and keeps no replaced answers.",
    )
    feedback_buttons: bool = Field(
        True, description="Show 👍 👎 🔁 buttons under each final reply (reactions work either way)."
    )
    feedback_flush_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Ratings are coalesced (latest wins per rater and answer) and written this often.",
    )

    max_new_tokens: int = Field(
        400,
        ge=1,
        description="Most tokens in a reply unless the model's entry sets its own; at most half its window.",
    )
    generation_timeout_s: float = Field(
        180.0,
        gt=0,
        description="A reply still generating this long after it started (queue and loading not counted) is "
        "stopped; also a remote model's read timeout.",
    )
    remote_first_byte_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A remote endpoint silent this long after a request is failed over (the reply's own "
        "deadline is generation_timeout_s).",
    )
    remote_backoff_s: float = Field(
        0.5,
        gt=0,
        description="Least wait after a remote 429/503 (even Retry-After: 0), doubled per further one.",
    )
    remote_backoff_max_s: float = Field(
        30.0, gt=0, description="Cap of that doubling (a longer Retry-After is obeyed)."
    )
    remote_backpressure_retries: int = Field(
        6,
        ge=0,
        description="Times a request is retried after a 429/503; the next one ends it ('overloaded').",
    )
    threads: int = Field(0, ge=0, description="CPU threads for llama.cpp; 0 = all cores.")
    max_loaded_models: int = Field(
        2, ge=1, description="Models kept loaded, remote ones too (LRU; one in use stays until it is idle)."
    )
    kv_slots: int = Field(
        8, ge=1, le=64, description="Conversations whose KV cache stays warm per local model."
    )
    parallel: int = Field(
        4, ge=1, le=64, description="Replies generated at once, all models together (batched per model)."
    )
    context_length: int = Field(
        2048,
        ge=256,
        description="Context window (tokens) per conversation unless the model's entry sets its own; a local "
        "model's is capped at its trained length.",
    )
    prefill_chunk: int = Field(
        256,
        ge=16,
        le=4096,
        description="Most prompt tokens read per decode step, shared by the prompts waiting (a long prompt "
        "is read in chunks, so replies being generated never wait for more than one such step).",
    )
    prompt_cache_mb: int = Field(
        1024,
        ge=0,
        description="Host memory (MiB per model) for the KV cache of conversations that lost their slot: "
        "their next turn restores it instead of reading the whole history again; 0 = off.",
    )
    temperature: float = Field(
        0.7, ge=0, description="Used unless the conversation (/temperature) or the model's entry sets one."
    )
    top_p: float = Field(0.9, gt=0, le=1, description="Used unless the model's entry sets one.")
    seed: int = Field(3407, description="Sampling seed of every reply.")
    log_level: str = Field(
        "INFO", description="Log level of `lorabot run` and the bots (DEBUG, INFO, WARNING, ERROR)."
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of /metrics (Prometheus), /healthz and /readyz (docs/operations.md); unset: "
        "off, no port opened; 0: any free port (logged). One per process: shards and replicas each "
        "need their own.",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the metrics port listens on (0.0.0.0 for a scraper in another container).",
    )

    @field_validator("default_model", "system_prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse at start-up what the store could not open (the value is never echoed: it may
        hold a password)."""
        if value is None or not value.get_secret_value().strip():
            return None
        from core.database import parse_database_url  # SQLAlchemy is imported only when a URL is set

        parse_database_url(value.get_secret_value())
        return SecretStr(value.get_secret_value().strip())

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @model_validator(mode="after")
    def _parallel_fits_slots(self) -> CoreSettings:
        if self.parallel > self.kv_slots:
            raise ValueError(
                f"LORABOT_PARALLEL ({self.parallel}) must not exceed LORABOT_KV_SLOTS ({self.kv_slots}): "
                "each reply being generated needs its own KV cache slot"
            )
        return self

    @property
    def resolved_models_file(self) -> Path:
        return self.models_file or self.data_dir / "models.toml"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'history.sqlite3'}"

    @property
    def resolved_threads(self) -> int:
        return self.threads or max(1, os.cpu_count() or 1)


def _is_secret(annotation: object) -> bool:
    return annotation is SecretStr or any(_is_secret(arg) for arg in get_args(annotation))


def describe_validation_error(
    error: ValidationError, prefix: str, hidden: frozenset[str] = frozenset()
) -> str:
    """Turn pydantic's error into one line per bad setting, named as the user writes it.

    The values of `hidden` settings (tokens, secrets) are never repeated back.
    """
    lines = []
    for item in error.errors():
        # list items add an index to the location; the user only knows the variable's name
        parts = [str(part) for part in item["loc"] if isinstance(part, str)]
        if not parts:  # a check across several settings names them in its message
            lines.append(item["msg"].removeprefix("Value error, "))
            continue
        shown = "'<hidden>'" if parts[0] in hidden else repr(item.get("input"))
        lines.append(f"{prefix}{'_'.join(parts).upper()}: {item['msg']} (got {shown})")
    return "Bad setting(s):\n  " + "\n  ".join(lines)


def load_settings(settings_class: type[S], prefix: str, **overrides: object) -> S:
    """Build `settings_class` from the environment and `.env`, or raise `SettingsError` naming each
    bad value — the one loader behind the core's, Discord's and Telegram's settings."""
    try:
        settings = settings_class(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        hidden = frozenset(
            name for name, field in settings_class.model_fields.items() if _is_secret(field.annotation)
        )
        raise SettingsError(describe_validation_error(error, prefix, hidden)) from error
    for name, field in settings_class.model_fields.items():
        value = getattr(settings, name)
        if _is_secret(field.annotation) and isinstance(value, SecretStr):
            register_secret(value.get_secret_value())  # never in a log line (core/logs.py)
    return settings


def load_core_settings(**overrides: object) -> CoreSettings:
    """Load settings or raise `SettingsError` naming each bad value."""
    return load_settings(CoreSettings, "LORABOT_", **overrides)
