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

[personas.pirate]                           # a persona (docs/personas.md): /persona pirate
system_prompt = "You are a cheerful pirate." # replaces LORABOT_SYSTEM_PROMPT in its conversations
model = "my-tune"                           # optional: a registered model
temperature = 0.9                           # optional
```

The embedded SmolLM2 model is always present. The file is re-read when it changes, so a
model registered by `lorabot train --register` shows up in running bots without a restart. A file
that fails to parse never stops replies: the last good registry stays in use (at least the
embedded model), the error is logged once per change of the file and shown by `problem`.

Writers (`models add`, `models pull`, `train --register`, from any process) take turns: an flock
on a sidecar `models.toml.lock` around read-modify-write, a unique temporary file in the same
folder renamed over the file, and an edit of the entry's own lines only, so comments, other
tables and keys this version does not know stay as they were written.

`promote(CANDIDATE, NAME)` (`lorabot models promote`, after the gate in training/evaluate/gate.py)
points NAME at the candidate's weights and keeps NAME's old entry as `NAME-previous`, in one
atomic write: a running bot sees the new file at NAME's next turn (core/pool.py reloads a changed
entry), never a file with half a promotion in it.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import logging
import os
import re
import stat
import tempfile
import threading
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.embedded import EMBEDDED_MODEL_NAME, embedded_model_path
from core.errors import UnknownModel, UnknownPersona

log = logging.getLogger(__name__)

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
PREVIOUS_SUFFIX = "-previous"  # a promoted NAME's old entry is kept as NAME-previous (the rollback)
WEIGHTS_KEYS = ("path", "urls", "remote_model", "api_key_env", "context_length")  # what promotion moves
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

    model_config = ConfigDict(hide_input_in_errors=True)  # a refused URL may hold a key: never echo it

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
            raise ValueError(
                "needs either path (a GGUF file) or urls (OpenAI-compatible endpoints), and not both"
            )
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


RESERVED_PERSONA_NAMES = ("default", "none")  # `/persona default` goes back to the default prompt


class Persona(BaseModel):
    """A system prompt with a name, and optionally a model and a temperature (docs/personas.md)."""

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    system_prompt: str = Field(min_length=1)
    model: str | None = Field(None, pattern=MODEL_NAME_PATTERN)  # a registered model's name
    temperature: float | None = Field(None, ge=0, le=2)
    description: str = ""

    @field_validator("system_prompt")
    @classmethod
    def _prompt(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("the system prompt is empty")
        return prompt

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if name.lower() in RESERVED_PERSONA_NAMES:
            raise ValueError(f"{name!r} is reserved (`/persona {name}` goes back to the default prompt)")
        return name


class RegistryError(Exception):
    """The models file is unreadable or has a bad entry; the message says where."""


@dataclass(frozen=True)
class Promotion:
    """What `ModelRegistry.promote` did: `replace` now serves `new` (the candidate's weights) and
    its old entry `old` is kept under `previous`."""

    candidate: str
    replace: str
    previous: str
    old: ModelEntry
    new: ModelEntry


def weights_source(entry: ModelEntry) -> tuple[object, ...]:
    """What serves an entry (its file, or its endpoints and served model): equal sources answer
    alike, so a promotion checks that NAME and the candidate still point where they were evaluated."""
    return (entry.path, tuple(entry.urls), entry.remote_model)


class ModelRegistry:
    """Reads (and for `add`/`remove`, writes) the models file; always includes the embedded model."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache_key: tuple[int, int, int] | None = None
        self._entries: dict[str, ModelEntry] = {}
        self._personas: dict[str, Persona] = {}
        self._problem: str | None = None

    def _file_key(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _parse(self) -> tuple[dict[str, dict], dict[str, dict], str]:
        """The [models] and [personas] tables and the file's text (for line numbers)."""
        if not self.path.exists():
            return {}, {}, ""
        try:
            text = self.path.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise RegistryError(f"{self.path}: cannot read models file: {error}") from error
        tables = []
        for section in ("models", "personas"):
            table = data.get(section, {})
            if not isinstance(table, dict):
                raise RegistryError(f"{self.path}: [{section}] must be a table of tables")
            tables.append(table)
        return tables[0], tables[1], text

    def _persona(self, name: str, raw: object, text: str) -> Persona:
        where = f"{self.path}: [personas.{name}]"
        if (line := _header_line(text, name, "personas")) is not None:
            where += f" (line {line})"
        if not isinstance(raw, dict):
            raise RegistryError(f"{where} must be a table")
        try:
            return Persona(name=name, **raw)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise RegistryError(f"{where}: {problems}") from error
        except TypeError as error:
            raise RegistryError(f"{where}: {error}") from error

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
                models, personas, text = self._parse()
                entries |= {name: self._entry(name, raw, text) for name, raw in models.items()}
                found = {name: self._persona(name, raw, text) for name, raw in personas.items()}
            except RegistryError as error:
                # keep serving the last good registry; parse this version of the file only once
                log.warning("%s; still using the last good models registry", error)
                self._problem, self._cache_key = str(error), key
                self._entries = self._entries or entries
                return self._entries
            self._entries, self._personas, self._cache_key, self._problem = entries, found, key, None
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

    # -- personas (docs/personas.md) -----------------------------------------------------------
    def personas(self) -> list[Persona]:
        """The personas of the file, in its order (of its last good version, like the models)."""
        self._load()
        return list(self._personas.values())

    def persona(self, name: str) -> Persona:
        self._load()
        personas = self._personas
        if name not in personas:
            raise UnknownPersona(name, list(personas))
        return personas[name]

    def add_persona(
        self,
        name: str,
        system_prompt: str,
        *,
        model: str | None = None,
        temperature: float | None = None,
        description: str = "",
        overwrite: bool = True,
    ) -> Persona:
        """Add (or replace) a persona; its model, if any, must be registered. Written like `add`."""
        persona = Persona(
            name=name,
            system_prompt=system_prompt,
            model=model,
            temperature=temperature,
            description=description,
        )
        if model is not None and model not in self:
            raise RegistryError(
                f"unknown model {model!r} for persona {name!r} (registered: {', '.join(self.names())})"
            )
        table = {
            key: value
            for key, value in persona.model_dump(exclude={"name"}).items()
            if value not in (None, "")
        }
        with self._writing() as text:
            if name in self._section_of(text, "personas") and not overwrite:
                raise RegistryError(f"persona {name!r} already exists")
            self._write(edit_models_text(text, name, table, section="personas"))
        return persona

    def remove_persona(self, name: str) -> None:
        with self._writing() as text:
            personas = self._section_of(text, "personas")
            if name not in personas:
                raise UnknownPersona(name, list(personas))
            self._write(edit_models_text(text, name, None, section="personas"))

    def personas_using(self, model: str) -> list[str]:
        """The personas that name `model` (so removing it can say who loses it)."""
        return [persona.name for persona in self.personas() if persona.model == model]

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
        table = {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in entry.model_dump(exclude={"name", "embedded"}).items()
            if value not in (None, "", [])
        }
        with self._writing() as text:
            if name in self._models_of(text) and not overwrite:
                raise RegistryError(f"{name!r} is already registered")
            self._write(edit_models_text(text, name, table))
        return entry

    def remove(self, name: str) -> None:
        with self._writing() as text:
            models = self._models_of(text)
            if name not in models:
                raise UnknownModel(name, list(models))
            self._write(edit_models_text(text, name, None))

    def check_promotion(self, candidate: str, replace: str) -> None:
        """Raise RegistryError (saying why) when `promote(candidate, replace)` would be refused:
        so the CLI fails on a bad name at once, not after a minutes-long evaluation."""
        try:
            text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        except (OSError, UnicodeDecodeError) as error:
            raise RegistryError(f"{self.path}: cannot read models file: {error}") from error
        self._plan_promotion(text, candidate, replace)

    def promote(
        self, candidate: str, replace: str, *, expected: Mapping[str, ModelEntry] | None = None
    ) -> Promotion:
        """Point `replace` (NAME) at `candidate`'s weights, keeping NAME's old entry as NAME-previous.

        One atomic write of the models file under the writers' lock: the candidate's `path` (or
        `urls`, `remote_model`, `api_key_env`), `context_length` and `description` replace NAME's;
        NAME's generation defaults (temperature, top_p, max_new_tokens) and keys this version does
        not know stay, as do comments and other entries. The candidate's entry stays as it is. An
        earlier NAME-previous is overwritten (one level of rollback; `lorabot models promote` logs
        every promotion). `expected` (name → entry as evaluated): refuse if NAME or the candidate
        was pointed elsewhere meanwhile, so what is promoted is what passed the gate."""
        with self._writing() as text:
            previous, old_raw, new_raw = self._plan_promotion(text, candidate, replace)
            models = self._models_of(text)
            old = self._entry(replace, old_raw, text)
            for name, seen in (expected or {}).items():
                raw = models.get(name)
                now = self._entry(name, raw, text) if raw is not None else _embedded_entries().get(name)
                if now is None or weights_source(now) != weights_source(seen):
                    raise RegistryError(
                        f"{name!r} was changed in {self.path} while it was being evaluated; "
                        "nothing was promoted: run the promotion again"
                    )
            edited = edit_models_text(text, previous, old_raw)
            edited = edit_models_text(edited, replace, new_raw)
            new = self._entry(replace, new_raw, edited)
            self._write(edited)
        log.info("promoted %s to %s (the old entry is kept as %s)", candidate, replace, previous)
        return Promotion(candidate=candidate, replace=replace, previous=previous, old=old, new=new)

    def _plan_promotion(self, text: str, candidate: str, replace: str) -> tuple[str, dict, dict]:
        """(NAME-previous, NAME's table as it is, NAME's table after), or RegistryError saying why not."""
        models = self._models_of(text)
        registered = sorted({*models, *_embedded_entries()})
        if candidate == replace:
            raise RegistryError(
                f"{candidate!r} cannot replace itself: give a candidate and the model it replaces"
            )
        if replace == EMBEDDED_MODEL_NAME:
            raise RegistryError(
                f"{replace!r} is the embedded model and cannot be replaced: serve a registered name "
                f"(`lorabot models add NAME PATH`, LORABOT_DEFAULT_MODEL=NAME) and promote over that"
            )
        if replace not in models:
            raise RegistryError(
                f"{replace!r} is not registered in {self.path}: nothing to replace "
                f"(registered: {', '.join(registered)})"
            )
        if candidate in models:
            candidate_raw = models[candidate]
            self._entry(candidate, candidate_raw, text)  # a bad candidate entry says where
        elif (embedded := _embedded_entries().get(candidate)) is not None:
            candidate_raw = {"path": str(embedded.path), "description": embedded.description}
        else:
            raise RegistryError(f"unknown candidate {candidate!r} (registered: {', '.join(registered)})")
        previous = replace + PREVIOUS_SUFFIX
        if not re.fullmatch(MODEL_NAME_PATTERN, previous):
            raise RegistryError(
                f"cannot keep {replace!r}'s old entry as {previous!r}: names are 64 characters at most"
            )
        old_raw = models[replace]
        self._entry(replace, old_raw, text)
        new_raw = {key: value for key, value in old_raw.items() if key not in (*WEIGHTS_KEYS, "description")}
        new_raw |= {key: candidate_raw[key] for key in (*WEIGHTS_KEYS, "description") if key in candidate_raw}
        return previous, dict(old_raw), new_raw

    def _models_of(self, text: str) -> dict[str, dict]:
        return self._section_of(text, "models")

    def _section_of(self, text: str, section: str) -> dict[str, dict]:
        try:
            tables = tomllib.loads(text).get(section, {})
        except tomllib.TOMLDecodeError as error:
            raise RegistryError(f"{self.path}: cannot read models file: {error}") from error
        if not isinstance(tables, dict):
            raise RegistryError(f"{self.path}: [{section}] must be a table of tables")
        return tables

    @contextlib.contextmanager
    def _writing(self) -> Iterator[str]:
        """The file's text, read and then rewritten while this writer holds the lock: writers in
        other processes wait (an flock on a sidecar file: the models file itself is replaced by a
        rename, so a lock on it would hold the old inode). OSErrors say what to do, no traceback."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _unwritable(path, error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                text = path.read_text(encoding="utf-8") if path.exists() else ""
            except (OSError, UnicodeDecodeError) as error:
                raise RegistryError(f"{path}: cannot read models file: {error}") from error
            yield text
        finally:
            os.close(fd)  # and the lock with it

    def _write(self, text: str) -> None:
        """Replace the file with `text` atomically: a temporary file of its own in the same folder
        (a fixed name let two writers trip over each other's), renamed over it."""
        path = self.path
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as error:
            raise _unwritable(path, error) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                mode = stat.S_IMODE(path.stat().st_mode)
            except FileNotFoundError:
                mode = 0o644
            os.chmod(tmp, mode)  # mkstemp's 0600 would hide the file from a bot running as another user
            os.replace(tmp, path)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _unwritable(path, error) from None
        with self._lock:
            self._cache_key = None


def _unwritable(path: Path, error: OSError) -> RegistryError:
    """A clear reason a writer cannot change the models file, and what to do about it."""
    reason = error.strerror or str(error)
    if error.errno == errno.EBUSY:  # rename over a file bind-mounted on its own
        hint = "it is a mount point (a file mounted into a container on its own): mount its folder instead"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = (
            "it or its folder is read-only here (in docker compose: a read-only mount); make it writable, "
            "or edit the file where it is writable"
        )
    else:
        hint = "nothing was changed"
    return RegistryError(f"cannot write the models file {path} ({reason}): {hint}")


_HEADER = re.compile(r"^\s*\[\[?[^\[\]]+\]\]?\s*(#.*)?$")


def _header_path(line: str) -> list[str] | None:
    """The key path of a table header line (`[models."my.tune"]` -> models, my.tune), else None."""
    if not _HEADER.match(line):
        return None
    try:
        node: object = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return None
    keys = []
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        keys.append(key)
        if isinstance(node, list) and node:  # [[array.of.tables]]
            node = node[-1]
    return keys


def edit_models_text(text: str, name: str, table: dict | None, section: str = "models") -> str:
    """`text` with the entry `[models.NAME]` (or `[personas.NAME]`: `section`) replaced by `table`
    (None: removed), every other line kept as written: comments, other tables, keys this version
    does not know. The edit is checked by parsing it; where the entry is not a plain
    `[models.NAME]` table (an inline table, dotted keys) the parsed document is written out whole
    instead: all its data kept, its comments lost."""
    data = tomllib.loads(text)
    expected = copy.deepcopy(data)
    models = expected.setdefault(section, {})
    if table is None:
        models.pop(name, None)
        if not models:  # the last entry went: no empty [models] header needed to match
            expected.pop(section)
    else:
        models[name] = table
    lines = text.splitlines(keepends=True)
    headers = [(i, keys) for i, line in enumerate(lines) if (keys := _header_path(line)) is not None]
    spans = []
    for n, (start, keys) in enumerate(headers):
        if keys[:2] != [section, name]:
            continue
        end = headers[n + 1][0] if n + 1 < len(headers) else len(lines)
        while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
            end -= 1  # blank lines and comments before the next header belong to it
        spans.append((start, end))
    block = tomli_w.dumps({section: {name: table}}) if table is not None else ""
    if spans:
        first = spans[0][0]
        kept = [line for i, line in enumerate(lines) if not any(a <= i < b for a, b in spans)]
        before = sum(1 for i in range(first) if not any(a <= i < b for a, b in spans))
        edited = "".join([*kept[:before], block, *kept[before:]])
    else:
        edited = text
        if block:
            if edited and not edited.endswith("\n"):
                edited += "\n"
            edited += ("\n" if edited.strip() else "") + block
    try:
        if tomllib.loads(edited) == expected:
            return edited
    except tomllib.TOMLDecodeError:
        pass
    log.warning(
        "rewrote the models file whole: [%s.%s] is not a plain table (its comments are lost)", section, name
    )
    return tomli_w.dumps(expected)


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


def _header_line(text: str, name: str, section: str = "models") -> int | None:
    """The line (1-based) of the `[models.NAME]` header, so an error in an entry names its line."""
    header = re.compile(rf"""\s*\[\s*{section}\s*\.\s*(["']?){re.escape(name)}\1\s*\]""")
    for number, line in enumerate(text.splitlines(), 1):
        if header.match(line):
            return number
    return None
