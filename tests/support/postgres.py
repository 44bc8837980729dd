"""A real PostgreSQL server for the tests: Debian's server binaries (installed by `make setup-dev`),
started once per session in a temporary data folder on a free loopback port, stopped at the end.

PostgreSQL refuses to run as root, so as root (CI) the server runs as the `postgres` user. Each
test gets a database of its own (`fresh_database`), so tests never see each other's rows.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path


def server_bin_dir() -> Path | None:
    """The newest installed server's bin folder (Debian keeps it off PATH), else PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path
    port: int
    user: str = "lorabot"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _run_as_owner(self, *command: str, **options: object) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *command], check=True, capture_output=True, text=True, **options)

    def start(self) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run_as_owner(
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
            "--auth=trust", "--encoding=UTF8", "--no-sync", timeout=120,
        )  # fmt: skip
        self.start_server()

    def start_server(self) -> None:
        """Start the server on the existing data folder (again, after `stop_server`)."""
        settings = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._run_as_owner(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.root / "server.log"),
            "-o", settings, "-w", "-t", "60", "start", timeout=90,
        )  # fmt: skip

    def stop_server(self) -> None:
        """Stop the server as an outage would (connections cut), keeping its data."""
        self._run_as_owner(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop", timeout=60
        )

    def stop(self) -> None:
        subprocess.run(
            [*(["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []),
             str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str) -> str:
        """Run `sql` in the server's `postgres` database; its output, trimmed."""
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
             "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tAc", sql],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return result.stdout.strip()

    def fresh_database(self) -> str:
        """A new empty database's URL (FILE_COPY: with fsync off it is the quickest way)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE template0 STRATEGY FILE_COPY")
        return self.url(name)


def start_postgres() -> PostgresServer | None:
    """A running server, or None when no server binaries are installed."""
    bin_dir = server_bin_dir()
    if bin_dir is None:
        return None
    server = PostgresServer(bin_dir, Path(tempfile.mkdtemp(prefix="lorabot-pg-")), _free_port())
    try:
        server.start()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        log = server.root / "server.log"
        detail = getattr(error, "stderr", "") or (log.read_text() if log.exists() else "")
        server.stop()
        raise RuntimeError(f"could not start PostgreSQL from {bin_dir}: {detail}") from error
    return server
