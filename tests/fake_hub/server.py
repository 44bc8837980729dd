"""A small, strict Hugging Face Hub on loopback, for the real `huggingface_hub`, `datasets` and
`transformers` clients (pointed at it with `HF_ENDPOINT`).

It speaks the part of the Hub's HTTP API those clients use to read and write a repo: repo info
(`/api/{models,datasets}/REPO[/revision/REV]`), tree listings and paths-info, file resolve (HEAD
and GET, with `X-Repo-Commit`, `ETag`, `X-Linked-Etag`/`X-Linked-Size` for LFS files, and Range
requests), and for pushes: `/api/repos/create`, `preupload`, the LFS batch API (basic transfer),
the upload itself, and `commit` (NDJSON). Like the real Hub it answers a missing file with 404 and
`X-Error-Code: EntryNotFound`, a missing repo with `RepoNotFound`, a missing revision with
`RevisionNotFound`, and refuses writes (and reads of private repos) without the right token.
Uploads go through Git LFS, not Xet (clients must run with `HF_HUB_DISABLE_XET=1`): Xet needs a
content-addressed store of its own, which this fake does not have.

Faults for tests: `cut_next_download(path, after)` closes the connection mid-body once (the client
must resume with a Range request); `corrupt(path)` serves the file with one byte changed, under
the true sha256 (the client must notice).

It runs its own event loop in a thread, so synchronous clients (and subprocesses) can use it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

LFS_SUFFIXES = (".gguf", ".safetensors", ".parquet", ".bin", ".pt", ".arrow")
LFS_MIN_SIZE = 10 * 2**20  # the Hub stores big files in LFS whatever their name
CHUNK = 256 * 1024


def git_blob_sha1(data: bytes) -> str:
    """The object id git gives a file (what the Hub reports as a regular file's ETag/oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    """One file in one commit: its bytes (or where they are on disk) and their hashes."""

    data: bytes | None
    source: Path | None
    size: int
    sha256: str
    git_oid: str
    lfs: bool

    @classmethod
    def from_bytes(cls, data: bytes, path_in_repo: str) -> HubFile:
        lfs = path_in_repo.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE
        return cls(data, None, len(data), hashlib.sha256(data).hexdigest(), git_blob_sha1(data), lfs)

    @classmethod
    def from_path(cls, source: Path) -> HubFile:
        digest = hashlib.sha256()
        with open(source, "rb") as handle:
            while block := handle.read(2**20):
                digest.update(block)
        pointer = (
            "version https://git-lfs.github.com/spec/v1\n"
            f"oid sha256:{digest.hexdigest()}\n"
            f"size {source.stat().st_size}\n"
        )
        return cls(
            None, source, source.stat().st_size, digest.hexdigest(), git_blob_sha1(pointer.encode()), True
        )

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the file."""
        end = self.size if end is None else end
        if self.data is not None:
            return self.data[start:end]
        with open(self.source, "rb") as handle:  # type: ignore[arg-type]
            handle.seek(start)
            return handle.read(end - start)


@dataclass
class HubRepo:
    repo_type: str  # "model" | "dataset"
    repo_id: str
    private: bool = False
    commits: list[tuple[str, dict[str, HubFile], str]] = field(default_factory=list)  # (sha, files, title)

    @property
    def head(self) -> str:
        return self.commits[-1][0]

    def files_at(self, revision: str) -> tuple[str, dict[str, HubFile]] | None:
        if revision == "main":
            return self.commits[-1][0], self.commits[-1][1]
        for sha, files, _title in self.commits:
            if sha == revision:
                return sha, files
        return None

    def commit(self, files: dict[str, HubFile], title: str) -> str:
        sha = hashlib.sha1(
            f"{self.repo_id}:{len(self.commits)}:{title}:{time.time_ns()}".encode()
        ).hexdigest()
        self.commits.append((sha, files, title))
        return sha


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case


class FakeHub:
    """Start with `start()` (or as a context manager); `url` is what HF_ENDPOINT should be."""

    USER = "lorabot-tester"  # whose token `token` is

    def __init__(self, token: str = "hf_fake_write_token") -> None:
        self.token = token
        self.repos: dict[tuple[str, str], HubRepo] = {}
        self.requests: list[Request] = []
        self.unhandled: list[str] = []  # routes the fake does not know: a test should see none
        self._cuts: dict[str, int] = {}
        self._corrupt: set[str] = set()
        self._lfs_store: dict[str, bytes] = {}  # sha256 -> uploaded bytes, before the commit
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- set-up from tests -------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | str | Path],
        repo_type: str = "model",
        private: bool = False,
    ) -> HubRepo:
        """A repo with one commit holding `files` (bytes, text, or a path to serve from disk)."""
        entries = {}
        for path, content in files.items():
            if isinstance(content, Path):
                entries[path] = HubFile.from_path(content)
            else:
                entries[path] = HubFile.from_bytes(
                    content.encode() if isinstance(content, str) else content, path
                )
        repo = HubRepo(repo_type, repo_id, private)
        repo.commit(entries, "initial commit")
        with self._lock:
            self.repos[(repo_type, repo_id)] = repo
        return repo

    def repo(self, repo_id: str, repo_type: str = "model") -> HubRepo:
        return self.repos[(repo_type, repo_id)]

    def cut_next_download(self, path_in_repo: str, after: int) -> None:
        """The next GET of that file stops (connection closed) after `after` bytes of its body."""
        self._cuts[path_in_repo] = after

    def corrupt(self, path_in_repo: str) -> None:
        """Serve that file with one byte changed (same size, same advertised sha256) from now on."""
        self._corrupt.add(path_in_repo)

    def requests_for(self, fragment: str, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if fragment in r.path and (method is None or r.method == method)]

    # ---- life cycle ----------------------------------------------------------------------------
    def start(self) -> FakeHub:
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start_server())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-hub", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the fake hub did not start")
        return self

    async def _start_server(self) -> None:
        app = web.Application(client_max_size=2**31, middlewares=[self._record])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)  # type: ignore[union-attr]
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)  # type: ignore[union-attr]
        self._loop.close()
        self._loop = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- HTTP ----------------------------------------------------------------------------------
    @web.middleware
    async def _record(self, request: web.Request, handler):
        headers = {key.lower(): value for key, value in request.headers.items()}
        self.requests.append(Request(request.method, request.path, dict(request.query), headers))
        return await handler(request)

    ROUTES: list[tuple[str, str, str]] = [
        # (methods, pattern, handler name); REPO is "owner/name"
        (
            "GET",
            r"/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?",
            "_info",
        ),
        (
            "GET",
            r"/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?",
            "_tree",
        ),
        (
            "POST",
            r"/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)",
            "_paths_info",
        ),
        (
            "POST",
            r"/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)",
            "_preupload",
        ),
        ("POST", r"/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", "_commit"),
        ("POST", r"/api/repos/create", "_create_repo"),
        ("GET", r"/api/agent-harnesses", "_agent_harnesses"),
        ("GET", r"/api/whoami-v2", "_whoami"),
        ("POST", r"/api/validate-yaml", "_validate_yaml"),
        ("POST", r"/(?:(?P<kind>datasets)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "_lfs_batch"),
        ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "_lfs_upload"),
        ("POST", r"/lfs-verify/(?P<oid>[0-9a-f]{64})", "_lfs_verify"),
        (
            "HEAD,GET",
            r"/(?:(?P<kind>datasets)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
            "_resolve",
        ),
    ]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        for methods, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, request.path)
            if match and request.method in methods.split(","):
                return await getattr(self, name)(request, **{k: v for k, v in match.groupdict().items()})
        self.unhandled.append(f"{request.method} {request.path_qs}")
        return _error(404, "NotFound", f"the fake hub has no route {request.method} {request.path}")

    # ---- auth and lookup -----------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def _bad_token(self, request: web.Request) -> bool:
        """A token was sent and it is not the right one (the real Hub refuses it outright)."""
        return "Authorization" in request.headers and not self._authorized(request)

    def _find(self, request: web.Request, kind: str | None, repo_id: str, write: bool = False):
        """(repo, None) or (None, an error response) as the real Hub would answer."""
        repo_type = "dataset" if kind == "datasets" else "model"
        if self._bad_token(request):
            return None, _error(401, None, "Invalid credentials in Authorization header")
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized(request)):
            return None, _error(404 if repo is None else 401, "RepoNotFound", "Repository not found")
        if write and not self._authorized(request):
            return None, _error(401, None, "Invalid credentials in Authorization header")
        return repo, None

    def _revision(self, repo: HubRepo, rev: str):
        found = repo.files_at(rev)
        if found is None:
            return None, _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return found, None

    # ---- read API ------------------------------------------------------------------------------
    async def _info(self, request: web.Request, kind: str, repo: str, rev: str | None) -> web.Response:
        found, error = self._find(request, kind, repo)
        if error:
            return error
        (sha, files), error = self._revision(found, rev or "main")
        if error:
            return error
        blobs = request.query.get("blobs") in {"True", "true", "1"}
        siblings = []
        for path, entry in sorted(files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling |= {"size": entry.size, "blobId": entry.git_oid}
                if entry.lfs:
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": 134}
            siblings.append(sibling)
        body = {
            "_id": hashlib.md5(repo.encode()).hexdigest()[:24],
            "id": repo,
            "author": repo.split("/")[0],
            "sha": sha,
            "private": found.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": siblings,
            "cardData": {},
        }
        return web.json_response(body)

    def _entry(self, path: str, entry: HubFile, commit: tuple[str, str] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.lfs:
            out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
        if commit:
            out["lastCommit"] = {"id": commit[0], "title": commit[1], "date": "2026-01-01T00:00:00.000Z"}
        return out

    def _listing(
        self, repo: HubRepo, sha: str, files: dict[str, HubFile], prefix: str, recursive: bool, expand: bool
    ):
        title = next(t for s, _f, t in repo.commits if s == sha)
        entries, folders = [], set()
        prefix = prefix.strip("/")
        for path, entry in sorted(files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            parts = rest.split("/")
            for depth in range(1, len(parts)):  # folders on the way
                folder = "/".join(([prefix] if prefix else []) + parts[:depth])
                if folder not in folders and (recursive or depth == 1):
                    folders.add(folder)
                    entries.append(
                        {
                            "type": "directory",
                            "oid": hashlib.sha1(folder.encode()).hexdigest(),
                            "size": 0,
                            "path": folder,
                        }
                    )
            if recursive or len(parts) == 1:
                entries.append(self._entry(path, entry, (sha, title) if expand else None))
        return entries

    async def _tree(
        self, request: web.Request, kind: str, repo: str, rev: str, path: str | None
    ) -> web.Response:
        found, error = self._find(request, kind, repo)
        if error:
            return error
        (sha, files), error = self._revision(found, rev)
        if error:
            return error
        prefix = (path or "").strip("/")
        if prefix and not any(p.startswith(prefix + "/") for p in files):
            return _error(404, "EntryNotFound", f"{prefix} does not exist on {rev}")
        recursive = request.query.get("recursive") in {"True", "true", "1"}
        expand = request.query.get("expand") in {"True", "true", "1"}
        return web.json_response(self._listing(found, sha, files, prefix, recursive, expand))

    async def _paths_info(self, request: web.Request, kind: str, repo: str, rev: str) -> web.Response:
        found, error = self._find(request, kind, repo)
        if error:
            return error
        (sha, files), error = self._revision(found, rev)
        if error:
            return error
        form = await request.post()
        paths = form.getall("paths", [])
        expand = form.get("expand") in {"True", "true", "1"}
        title = next(t for s, _f, t in found.commits if s == sha)
        out = []
        for path in paths:
            path = str(path).strip("/")
            if path in files:
                out.append(self._entry(path, files[path], (sha, title) if expand else None))
            elif any(p.startswith(path + "/") for p in files):
                out.append(
                    {
                        "type": "directory",
                        "oid": hashlib.sha1(path.encode()).hexdigest(),
                        "size": 0,
                        "path": path,
                    }
                )
        return web.json_response(out)

    async def _resolve(
        self, request: web.Request, kind: str | None, repo: str, rev: str, path: str
    ) -> web.StreamResponse:
        found, error = self._find(request, kind, repo)
        if error:
            return error
        (sha, files), error = self._revision(found, rev)
        if error:
            error.headers["X-Repo-Commit"] = found.head
            return error
        entry = files.get(path)
        if entry is None:
            response = _error(404, "EntryNotFound", f"{path} does not exist on {rev}")
            response.headers["X-Repo-Commit"] = sha
            return response
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if entry.lfs:
            headers |= {
                "ETag": f'"{entry.sha256}"',
                "X-Linked-Etag": f'"{entry.sha256}"',
                "X-Linked-Size": str(entry.size),
            }
        else:
            headers["ETag"] = f'"{entry.git_oid}"'
        start, end = 0, entry.size
        status = 200
        if (wanted := request.headers.get("Range")) is not None:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
            if not match or int(match[1]) >= entry.size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{entry.size}"})
            start, end = int(match[1]), min(entry.size, int(match[2]) + 1 if match[2] else entry.size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        cut = self._cuts.pop(path, None)
        position = start
        while position < end:
            block = entry.read(position, min(end, position + CHUNK))
            if path in self._corrupt and position <= entry.size // 2 < position + len(block):
                index = entry.size // 2 - position
                block = block[:index] + bytes([block[index] ^ 0xFF]) + block[index + 1 :]
            if cut is not None and position + len(block) >= start + cut:
                await response.write(block[: start + cut - position])
                request.transport.close()  # mid-body: the client sees an incomplete response
                return response
            await response.write(block)
            position += len(block)
        await response.write_eof()
        return response

    async def _agent_harnesses(self, request: web.Request) -> web.Response:
        """huggingface_hub's user-agent telemetry asks for this list (once a day); none here."""
        return web.json_response({"standardEnvVars": [], "harnesses": {}})

    async def _whoami(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, None, "Invalid credentials in Authorization header")
        return web.json_response(
            {
                "type": "user",
                "name": self.USER,
                "fullname": "lorabot tester",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}},
            }
        )

    async def _validate_yaml(self, request: web.Request) -> web.Response:
        """The model card's YAML header must parse (the Hub checks it before a commit)."""
        import yaml

        content = (await request.json()).get("content", "")
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---", 2)[1])
            except yaml.YAMLError as error:
                return web.json_response({"error": f"Invalid YAML in README.md: {error}"}, status=400)
        return web.json_response({"warnings": []})

    # ---- write API -----------------------------------------------------------------------------
    async def _create_repo(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, None, "Invalid credentials in Authorization header")
        payload = await request.json()
        name, organization = payload.get("name"), payload.get("organization")
        if not name or not organization:
            return _error(400, None, "the fake hub wants REPO as owner/name")
        repo_type = payload.get("type") or "model"
        repo_id = f"{organization}/{name}"
        prefix = "datasets/" if repo_type == "dataset" else ""
        if (repo_type, repo_id) in self.repos:  # like the Hub: 409, with the URL (exist_ok clients read it)
            return web.json_response(
                {"error": "You already created this model repo", "url": f"{self.url}/{prefix}{repo_id}"},
                status=409,
                headers={"X-Error-Message": "You already created this model repo"},
            )
        repo = HubRepo(repo_type, repo_id, private=payload.get("visibility") == "private")
        repo.commit(
            {
                ".gitattributes": HubFile.from_bytes(
                    b"*.gguf filter=lfs diff=lfs merge=lfs -text\n", ".gitattributes"
                )
            },
            "initial commit",
        )
        self.repos[(repo_type, repo_id)] = repo
        return web.json_response({"url": f"{self.url}/{prefix}{repo_id}", "name": repo_id, "id": repo.head})

    async def _preupload(self, request: web.Request, kind: str, repo: str, rev: str) -> web.Response:
        found, error = self._find(request, kind, repo, write=True)
        if error:
            return error
        (_sha, files), error = self._revision(found, rev)
        if error:
            return error
        payload = await request.json()
        out = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item["size"])
            lfs = path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE
            existing = files.get(path)
            oid = (existing.sha256 if existing.lfs else existing.git_oid) if existing else None
            out.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return web.json_response({"files": out, "commitOid": found.head})

    async def _lfs_batch(self, request: web.Request, kind: str | None, repo: str) -> web.Response:
        found, error = self._find(request, kind, repo, write=True)
        if error:
            return error
        payload = await request.json()
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            return _error(422, None, "the fake hub only takes basic LFS uploads")
        objects = []
        for item in payload.get("objects", []):
            oid, size = item["oid"], int(item["size"])
            objects.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": {"href": f"{self.url}/lfs-upload/{oid}", "header": {}},
                        "verify": {"href": f"{self.url}/lfs-verify/{oid}", "header": {}},
                    },
                }
            )
        return web.json_response(
            {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json"
        )

    async def _lfs_upload(self, request: web.Request, oid: str) -> web.Response:
        data = await request.read()
        if hashlib.sha256(data).hexdigest() != oid:
            return web.Response(status=400, text="content does not match its oid")
        self._lfs_store[oid] = data
        return web.Response(status=200)

    async def _lfs_verify(self, request: web.Request, oid: str) -> web.Response:
        if not self._authorized(request):
            return _error(401, None, "Invalid credentials in Authorization header")
        payload = await request.json()
        stored = self._lfs_store.get(oid)
        if stored is None or len(stored) != int(payload.get("size", -1)):
            return _error(404, None, f"LFS object {oid} was not uploaded")
        return web.json_response({"ok": True})

    async def _commit(self, request: web.Request, kind: str, repo: str, rev: str) -> web.Response:
        found, error = self._find(request, kind, repo, write=True)
        if error:
            return error
        if rev != "main":
            return _error(400, None, "the fake hub only commits to main")
        files = dict(found.commits[-1][1])
        summary = "commit"
        for line in (await request.read()).splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary") or summary
            elif key == "file":
                files[value["path"]] = HubFile.from_bytes(base64.b64decode(value["content"]), value["path"])
            elif key == "lfsFile":
                data = self._lfs_store.get(value["oid"])
                if data is None:
                    return _error(
                        422, None, f"LFS object {value['oid']} for {value['path']} was never uploaded"
                    )
                entry = HubFile.from_bytes(data, value["path"])
                entry.lfs = True
                files[value["path"]] = entry
            elif key in {"deletedFile", "deletedFolder"}:
                path = value["path"].rstrip("/")
                doomed = [p for p in files if p == path or p.startswith(path + "/")]
                if not doomed:
                    return _error(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
                for p in doomed:
                    del files[p]
            else:
                return _error(400, None, f"unknown commit operation {key!r}")
        sha = found.commit(files, summary)
        prefix = "datasets/" if found.repo_type == "dataset" else ""
        return web.json_response(
            {"commitUrl": f"{self.url}/{prefix}{repo}/commit/{sha}", "commitOid": sha, "success": True}
        )


def _error(status: int, code: str | None, message: str) -> web.Response:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return web.json_response({"error": message}, status=status, headers=headers)
