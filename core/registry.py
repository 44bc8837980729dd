"""The models registry: a TOML file mapping a name to a GGUF file, or to OpenAI-compatible
inference servers, and its defaults (docs/models.md).

```toml
[models.my-tune]
path = "out/my-tune/model-q4_k_m.gguf"   # relative paths are relative to this file
context_length = 2048                       # optional
description = "SmolLM2 tuned on our FAQ"    # optional
temperature = 0.6                           # optional generation defaults
top_p = 0.9
max_new_tokens = 300

[models.big]                                # a remote model: endpoints instead of a path
urls = ["http://gpu-1:8000/v1", "http://gpu-2:8000/v1"]
remote_model = "llama-3.1-8b"               # optional: the name the servers serve
api_key_env = "BIG_API_KEY"                 # optional: the variable holding the key (never the key)
```

The embedded SmolLM2 model is always present. The file is re-read when it changes, so a
model registered by `lorabot train --register` shows up in running bots without a restart. A file
that fails to parse never stops replies: the last good registry stays in use (at least the
embedded model), the error is logged once per change of the file and shown by `problem`.
"""

from __future__ import annotations

import logging
import re
import threading
import tomllib
from pathlib import Path

import tomli_w
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from core.embedded import EMBEDDED_MODEL_NAME, embedded_model_path
from core.errors import UnknownModel

log = logging.getLogger(__name__)

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


def normalize_url(url: str) -> str:
    """An endpoint's base URL (`http://host:port/v1`) without a trailing slash; only http(s) with
    a host, and no credentials, query or fragment in it (keys come from the environment, see
    `api_key_env`). The errors about those never echo the URL: it may hold a key."""
    url = url.strip().rstrip("/")
    if "?" in url or "#" in url:  # requests go to {url}/chat/completions: a query would break them
        raise ValueError(
            "put no query (?…) or fragment (#…) in an endpoint URL: give the base URL, like "
            "http://gpu-1:8000/v1, and name the variable holding a key with api_key_env"
        )
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    if "@" in host:
        raise ValueError("put no credentials in the URL: name the variable holding the key (api_key_env)")
    if scheme.lower() not in ("http", "https") or not sep or not host:
        raise ValueError(f"{url!r} is not an http(s) URL like http://gpu-1:8000/v1")
    return url


class ModelEntry(BaseModel):
    """One registered model: a GGUF file (`path`) or OpenAI-compatible endpoints (`urls`)."""

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    path: Path | None = None
    urls: list[str] = Field(default_factory=list)  # base URLs, …/v1; requests go to the least busy
    remote_model: str | None = None  # the model name the servers serve (default: the one they list)
    api_key_env: str | None = Field(None, pattern=ENV_NAME_PATTERN)  # the variable, never the key
    context_length: int | None = Field(None, ge=128)
    description: str = ""
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_new_tokens: int | None = Field(None, ge=1)
    embedded: bool = False

    @field_validator("urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        return list(dict.fromkeys(normalize_url(url) for url in urls))

    @model_validator(mode="after")
    def _path_or_urls(self) -> ModelEntry:
        if (self.path is None) == (not self.urls):
            raise ValueError("needs either path (a GGUF file) or urls (OpenAI-compatible endpoints), and not both")
        if self.path is not None and (self.remote_model or self.api_key_env):
            raise ValueError("remote_model and api_key_env are for entries with urls")
        return self

    @property
    def is_remote(self) -> bool:
        return bool(self.urls)

    @property
    def size_bytes(self) -> int | None:
        if self.path is None:
            return None
        try:
            return self.path.stat().st_size
        except OSError:
            return None


class RegistryError(Exception):
    """The models file is unreadable or has a bad entry; the message says where."""


class ModelRegistry:
    """Reads (and for `add`/`remove`, writes) the models file; always includes the embedded model."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache_key: tuple[int, int, int] | None = None
        self._entries: dict[str, ModelEntry] = {}
        self._problem: str | None = None

    def _file_key(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _read_file(self) -> dict[str, dict]:
        return self._parse()[0]

    def _parse(self) -> tuple[dict[str, dict], str]:
        """The [models] table and the file's text (for line numbers)."""
        if not self.path.exists():
            return {}, ""
        try:
            text = self.path.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise RegistryError(f"{self.path}: cannot read models file: {error}") from error
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise RegistryError(f"{self.path}: [models] must be a table of tables")
        return models, text

    def _entry(self, name: str, raw: object, text: str) -> ModelEntry:
        where = f"{self.path}: [models.{name}]"
        if (line := _header_line(text, name)) is not None:
            where += f" (line {line})"
        if not isinstance(raw, dict):
            raise RegistryError(f"{where} must be a table")
        try:
            entry = ModelEntry(name=name, **raw)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise RegistryError(f"{where}: {problems}") from error
        except TypeError as error:
            raise RegistryError(f"{where}: {error}") from error
        if entry.path is not None and not entry.path.is_absolute():
            entry.path = (self.path.parent / entry.path).resolve()
        return entry

    def _load(self) -> dict[str, ModelEntry]:
        with self._lock:
            key = self._file_key()
            if self._entries and key == self._cache_key:
                return self._entries
            entries = _embedded_entries()
            try:
                models, text = self._parse()
                entries |= {name: self._entry(name, raw, text) for name, raw in models.items()}
            except RegistryError as error:
                # keep serving the last good registry; parse this version of the file only once
                log.warning("%s; still using the last good models registry", error)
                self._problem, self._cache_key = str(error), key
                self._entries = self._entries or entries
                return self._entries
            self._entries, self._cache_key, self._problem = entries, key, None
            return entries

    @property
    def problem(self) -> str | None:
        """Why the models file is not in use (its error, with the line), or None when it is."""
        self._load()
        return self._problem

    def names(self) -> list[str]:
        return list(self._load())

    def all(self) -> list[ModelEntry]:
        return list(self._load().values())

    def get(self, name: str) -> ModelEntry:
        entries = self._load()
        if name not in entries:
            raise UnknownModel(name, list(entries))
        return entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._load()

    def add(
        self,
        name: str,
        path: Path | None = None,
        *,
        urls: list[str] | None = None,
        remote_model: str | None = None,
        api_key_env: str | None = None,
        context_length: int | None = None,
        description: str = "",
        overwrite: bool = True,
    ) -> ModelEntry:
        """Register (or replace) a model, a GGUF `path` or endpoint `urls`; written atomically."""
        entry = ModelEntry(
            name=name,
            path=Path(path).resolve() if path is not None else None,
            urls=list(urls or []),
            remote_model=remote_model,
            api_key_env=api_key_env,
            context_length=context_length,
            description=description,
        )
        if name == EMBEDDED_MODEL_NAME:
            raise RegistryError(f"{name!r} is the embedded model's name; pick another")
        raw = self._read_file()
        if name in raw and not overwrite:
            raise RegistryError(f"{name!r} is already registered")
        raw[name] = {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in entry.model_dump(exclude={"name", "embedded"}).items()
            if value not in (None, "", [])
        }
        self._write(raw)
        return entry

    def remove(self, name: str) -> None:
        raw = self._read_file()
        if name not in raw:
            raise UnknownModel(name, list(raw))
        del raw[name]
        self._write(raw)

    def _write(self, models: dict[str, dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(tomli_w.dumps({"models": models}), encoding="utf-8")
        tmp.replace(self.path)
        with self._lock:
            self._cache_key = None


def _embedded_entries() -> dict[str, ModelEntry]:
    try:
        embedded = embedded_model_path()
    except FileNotFoundError:
        return {}
    return {
        EMBEDDED_MODEL_NAME: ModelEntry(
            name=EMBEDDED_MODEL_NAME,
            path=embedded,
            context_length=None,
            description="SmolLM2-135M-Instruct Q4_1 (embedded, fast)",
            embedded=True,
        )
    }


def _header_line(text: str, name: str) -> int | None:
    """The line (1-based) of the `[models.NAME]` header, so an error in an entry names its line."""
    header = re.compile(rf"""\s*\[\s*models\s*\.\s*(["']?){re.escape(name)}\1\s*\]""")
    for number, line in enumerate(text.splitlines(), 1):
        if header.match(line):
            return number
    return None
