"""Transfers with the Hugging Face Hub: pull a GGUF for the models registry, push a training run.

`huggingface_hub` does the HTTP: its tqdm progress bars, and retries that resume an interrupted
download with a Range request. What it does not do, this module does: pick the GGUF among a
repo's files (`--file PATTERN`), check the download's sha256 against the Hub's LFS record (a
mismatch deletes the file, so nothing corrupt is ever registered), and turn the library's
exceptions into one sentence a user can act on. `HF_ENDPOINT` points it at a mirror (or the
tests' fake hub); `HF_TOKEN` is the token, read from the environment, never printed.

Import-light: only `huggingface_hub` (a main dependency), so `lorabot models pull` works
without the `train` extra.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from training.errors import HubError

GGUF_MAGIC = b"GGUF"
SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
TOKEN_VARIABLE = "HF_TOKEN"


@dataclass(frozen=True)
class RemoteFile:
    """A file of a Hub repo, with what the Hub says its content is."""

    path: str
    size: int | None
    sha256: str | None  # LFS files: the sha256 of the content
    git_oid: str | None  # regular (non-LFS) files: git's blob id

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class PulledModel:
    repo: str
    commit: str
    files: list[Path]  # one GGUF, or every shard of a split one (the first is what llama.cpp opens)

    @property
    def path(self) -> Path:
        return self.files[0]


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def token_from_environment(required: bool = False) -> str | None:
    """$HF_TOKEN, registered with the log redactor so no log line or error shows it."""
    from core.logs import register_secret

    token = os.environ.get(TOKEN_VARIABLE) or None
    if required and not token:
        raise HubError(
            f"pushing to the Hub needs a write token: set {TOKEN_VARIABLE} in the environment "
            "(https://huggingface.co/settings/tokens)"
        )
    register_secret(token)
    return token


@contextlib.contextmanager
def hub_errors(repo: str) -> Iterator[None]:
    """huggingface_hub / httpx exceptions → one HubError saying what to do."""
    import httpx
    from huggingface_hub import errors

    from core.logs import redact

    where = f"{endpoint()}"
    try:
        yield
    except errors.GatedRepoError as error:
        raise HubError(
            f"{repo} is gated: accept its terms on its Hub page, "
            f"then set {TOKEN_VARIABLE} to a token of that account"
        ) from error
    except errors.RepositoryNotFoundError as error:
        if (
            error.response is not None
            and error.response.status_code == 401
            and os.environ.get(TOKEN_VARIABLE)
        ):
            raise HubError(
                f"the Hub refused the token in {TOKEN_VARIABLE} for {repo} (wrong, expired or no access)"
            ) from error
        raise HubError(
            f"no model repo {repo!r} on {where} (if it is private or gated, set {TOKEN_VARIABLE})"
        ) from error
    except errors.RevisionNotFoundError as error:
        raise HubError(f"{repo} has no such revision: {redact(str(error)).splitlines()[-1]}") from error
    except errors.RemoteEntryNotFoundError as error:
        raise HubError(
            f"{repo}: file not found on the Hub ({redact(str(error)).splitlines()[-1]})"
        ) from error
    except errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        if status == 401:
            raise HubError(
                f"the Hub refused the token in {TOKEN_VARIABLE} "
                f"({'none set' if not os.environ.get(TOKEN_VARIABLE) else 'invalid or read-only'})"
            ) from error
        raise HubError(
            f"the Hub answered {status} for {repo}: {redact(str(error)).splitlines()[0]}"
        ) from error
    except (
        httpx.ConnectError,
        httpx.TimeoutException,
        errors.OfflineModeIsEnabled,
        errors.LocalEntryNotFoundError,
    ) as error:
        raise HubError(
            f"cannot reach the Hub at {where} ({type(error).__name__}); "
            "check the network, HF_ENDPOINT and HF_HUB_OFFLINE"
        ) from error


# ---- pull -------------------------------------------------------------------------------------
def list_ggufs(repo: str, revision: str | None = None) -> tuple[str, list[RemoteFile]]:
    """(commit, the repo's GGUF files with their sizes and hashes) in one API call."""
    from huggingface_hub import HfApi

    with hub_errors(repo):
        info = HfApi().model_info(
            repo, revision=revision, files_metadata=True, token=token_from_environment()
        )
    files = [
        RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None, s.blob_id)
        for s in info.siblings or []
        if s.rfilename.lower().endswith(".gguf")
    ]
    return info.sha, files


def pick_gguf(repo: str, files: list[RemoteFile], pattern: str | None) -> list[RemoteFile]:
    """The one GGUF `pattern` names (all its shards if it is split), or a HubError listing the choice.

    A pattern matches a file's name or its path, case-insensitively (`*q4_k_m.gguf`, `Q8_0`)."""
    if not files:
        raise HubError(f"{repo} has no .gguf file; pick a repo of GGUF conversions (often named ...-GGUF)")
    candidates = files
    if pattern:
        wanted = pattern.lower() if any(ch in pattern for ch in "*?[") else f"*{pattern.lower()}*"
        candidates = [
            f
            for f in files
            if fnmatch.fnmatch(f.name.lower(), wanted) or fnmatch.fnmatch(f.path.lower(), wanted)
        ]
        if not candidates:
            raise HubError(f"no GGUF in {repo} matches {pattern!r}; there are: {_names(files)}")
    models = _group_shards(candidates)
    if len(models) > 1:
        hint = (
            "pass --file PATTERN to choose one"
            if not pattern
            else f"{pattern!r} matches several; make --file narrower"
        )
        raise HubError(f"{repo} has {len(models)} GGUF models: {', '.join(models)}; {hint}")
    ((name, members),) = models.items()
    shards = SHARD.match(members[0].name)
    if shards and len(members) != int(shards["count"]):
        raise HubError(f"{name} is split in {shards['count']} files but {len(members)} match; widen --file")
    return members


def _group_shards(files: list[RemoteFile]) -> dict[str, list[RemoteFile]]:
    """Split GGUFs (`x-00001-of-00003.gguf`) count as one model, listed under `x`."""
    models: dict[str, list[RemoteFile]] = {}
    for remote in sorted(files, key=lambda f: f.path):
        shard = SHARD.match(remote.name)
        key = remote.path[: -len(remote.name)] + shard["stem"] if shard else remote.path
        models.setdefault(key, []).append(remote)
    return models


def _names(files: list[RemoteFile]) -> str:
    shown = [f"{f.path} ({f.size / 2**20:.0f} MiB)" if f.size else f.path for f in files[:12]]
    return ", ".join(shown) + (f" and {len(files) - 12} more" if len(files) > 12 else "")


def file_digest(path: Path) -> str:
    """The file's sha256 (what the Hub lists for LFS files), read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(2**22):
            digest.update(block)
    return digest.hexdigest()


def git_blob_oid(path: Path) -> str:
    """git's id of a file's content (what the Hub gives for non-LFS files)."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        while block := handle.read(2**22):
            digest.update(block)
    return digest.hexdigest()


def verify(local: Path, remote: RemoteFile) -> None:
    """The file is what the Hub says it is, and a GGUF; otherwise delete it and say so."""
    if remote.sha256:
        expected, got, what = remote.sha256, file_digest(local), "sha256"
    elif remote.git_oid:
        expected, got, what = remote.git_oid, git_blob_oid(local), "git blob id"
    else:
        expected = got = what = ""
    problem = None
    if expected and got != expected:
        problem = (
            f"checksum mismatch for {remote.path}: the Hub's {what} is {expected}, the download's is {got}"
        )
    else:
        with open(local, "rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                problem = f"{remote.path} is not a GGUF file (no GGUF header)"
    if problem:
        _discard(local)
        raise HubError(
            f"{problem}; the file was deleted and nothing was registered. Run the command again to retry."
        )


def _discard(local: Path) -> None:
    """Remove a bad download and huggingface_hub's note about it, so a retry downloads again."""
    local.unlink(missing_ok=True)
    for parent in local.parents:
        metadata = (
            parent / ".cache" / "huggingface" / "download" / (str(local.relative_to(parent)) + ".metadata")
        )
        if metadata.exists():
            metadata.unlink()
            break


def pull_gguf(repo: str, dest: Path, pattern: str | None = None, revision: str | None = None) -> PulledModel:
    """Download one GGUF model (every shard if split) of `repo` into `dest`, checked.

    Pinned to the commit the listing came from, so files of one pull never mix two revisions.
    A file already in `dest` at that commit is not downloaded again."""
    from huggingface_hub import hf_hub_download

    commit, files = list_ggufs(repo, revision)
    chosen = pick_gguf(repo, files, pattern)
    dest.mkdir(parents=True, exist_ok=True)
    local_files = []
    for remote in chosen:
        with hub_errors(repo):
            try:
                local = Path(
                    hf_hub_download(
                        repo, remote.path, revision=commit, local_dir=dest, token=token_from_environment()
                    )
                )
            except OSError as error:  # size check after the retries, disk full...
                if type(error).__module__.startswith("huggingface_hub"):
                    raise
                raise HubError(f"downloading {remote.path} from {repo} failed: {error}") from error
        verify(local, remote)
        local_files.append(local)
    return PulledModel(repo=repo, commit=commit, files=local_files)


def default_model_name(pulled: PulledModel) -> str:
    """A registry name from the file name:
    `Llama-3.2-1B-Instruct-Q4_K_M.gguf` → `Llama-3.2-1B-Instruct-Q4_K_M`."""
    name = pulled.path.name
    shard = SHARD.match(name)
    stem = shard["stem"] if shard else name[: -len(".gguf")]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:64]
    return cleaned or "hub-model"


# ---- push -------------------------------------------------------------------------------------
def prepare_push(repo: str) -> str:
    """Check the token and make sure the repo exists, before hours of training; returns the account."""
    from huggingface_hub import HfApi

    token = token_from_environment(required=True)
    api = HfApi(token=token)
    with hub_errors(repo):
        account = api.whoami()["name"]
        api.create_repo(repo, private=False, exist_ok=True)
    return account


def run_files(run_dir: Path) -> dict[str, Path]:
    """What a run publishes: the LoRA adapter (at the repo root, so `PeftModel.from_pretrained(repo)`
    works), the quantized GGUF (or the f16 one when there is no quantized one)."""
    run_dir = Path(run_dir)
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise HubError(f"no LoRA adapter in {adapter}; did training finish?")
    files = {p.relative_to(adapter).as_posix(): p for p in sorted(adapter.rglob("*")) if p.is_file()}
    files.pop("README.md", None)  # peft's placeholder card; push_run writes one that names the base
    ggufs = sorted(run_dir.glob("model-*.gguf"))
    quantized = [p for p in ggufs if p.name != "model-f16.gguf"]
    for gguf in quantized or ggufs:
        files[gguf.name] = gguf
    return files


def model_card(repo: str, base: str, files: dict[str, Path]) -> str:
    ggufs = [name for name in files if name.endswith(".gguf")]
    base_line = f"base_model: {base}\n" if "/" in base and not base.startswith(("/", ".", "~")) else ""
    lines = [
        "---",
        f"{base_line}library_name: peft",
        "tags:",
        "- lorabot",
        "- lora",
        *(["- gguf"] if ggufs else []),
        "---",
        "",
        f"# {repo.split('/')[-1]}",
        "",
        f"A LoRA adapter of `{base}` trained with lorabot (`lorabot train`).",
        "",
    ]
    if ggufs:
        lines += [
            f"Merged and converted to GGUF: {', '.join(f'`{g}`' for g in ggufs)}. For the bot:",
            "",
            "```sh",
            f"lorabot models pull {repo} --file {ggufs[0]}",
            "```",
            "",
        ]
    return "\n".join(lines)


def push_run(run_dir: Path, repo: str) -> str:
    """Upload a run's adapter and GGUF to `repo` in one commit; returns the commit's URL."""
    import json

    from huggingface_hub import CommitOperationAdd, HfApi

    files = run_files(run_dir)
    record_path = Path(run_dir) / "run.json"
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    config = record.get("config", {})
    # a --from-model run's base is a local registered model: name it (no hub `base_model:` line then)
    base = config.get("from_model") or config.get("base_model", "?")
    token = token_from_environment(required=True)
    api = HfApi(token=token)
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()
    ]
    operations.append(
        CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=model_card(repo, base, files).encode())
    )
    with hub_errors(repo):
        api.create_repo(repo, private=False, exist_ok=True)
        commit = api.create_commit(repo, operations, commit_message=f"lorabot: {Path(run_dir).name}")
    return commit.commit_url
