"""docker-compose.yml starts lorabot + PostgreSQL + llama-server the way docs/scaling.md says.

Checked with `docker compose config` where Docker Compose is installed; otherwise (and also then)
parsed here: the services, what waits for what, the database URL lorabot gets (accepted by its
own settings), the models file that points lorabot at the llama-server service, and the image.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

from core.database import parse_database_url
from core.ops_server import OpsServer
from core.registry import ModelRegistry
from core.settings import load_core_settings
from support.engines import make_service

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def substituted(text: str, values: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with `values` (what .env would set)."""

    def value(match: re.Match[str]) -> str:
        name, operator, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        if name in values:
            return values[name]
        if operator == ":?":
            raise AssertionError(f"${{{name}}} is required: {rest}")
        return rest

    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", value, text)


@pytest.fixture(scope="module")
def compose() -> dict:
    text = substituted(COMPOSE.read_text(), {"POSTGRES_PASSWORD": "s3cret"})
    return yaml.safe_load(text)


def test_docker_compose_config_accepts_the_file(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("Docker Compose is not installed (the file is still checked by the tests below)")
    env = tmp_path / ".env"
    env.write_text("POSTGRES_PASSWORD=s3cret\n")
    result = subprocess.run(
        [docker, "compose", "--project-directory", str(ROOT), "--env-file", str(env),
         "-f", str(COMPOSE), "config", "-q"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_the_password_is_required():
    with pytest.raises(AssertionError, match="POSTGRES_PASSWORD"):
        substituted(COMPOSE.read_text(), {})


def test_services_and_start_order(compose):
    services = compose["services"]
    assert set(services) == {"lorabot", "postgres", "llama-server", "prometheus"}
    bot = services["lorabot"]
    assert bot["command"] == ["lorabot", "run"]
    assert {"path": ".env", "required": False} in bot["env_file"]
    for dependency in ("postgres", "llama-server"):
        assert bot["depends_on"][dependency] == {"condition": "service_healthy"}
        assert services[dependency]["healthcheck"]["test"]  # "healthy" needs a check to become true
    assert (ROOT / bot["build"] / "Dockerfile").is_file()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "postgres]" in dockerfile and 'CMD ["lorabot", "run"]' in dockerfile  # the driver is in the image


def test_lorabot_gets_the_postgres_database(compose):
    services = compose["services"]
    environment = services["lorabot"]["environment"]
    url = parse_database_url(environment["LORABOT_DATABASE_URL"])  # what lorabot's settings accept
    postgres = services["postgres"]["environment"]
    assert url.get_backend_name() == "postgresql" and url.host == "postgres" and url.port == 5432
    assert (url.username, url.password, url.database) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]
    )  # fmt: skip


def test_lorabot_answers_through_llama_server(compose):
    services = compose["services"]
    bot = services["lorabot"]
    registry = ModelRegistry(models_file_on_host(bot))  # the file lorabot reads in its container
    assert registry.problem is None, registry.problem
    entry = registry.get(bot["environment"]["LORABOT_DEFAULT_MODEL"])
    server = services["llama-server"]["command"]
    port = server[server.index("--port") + 1]
    assert entry.urls == [f"http://llama-server:{port}/v1"]
    assert server[server.index("--host") + 1] == "0.0.0.0"  # reachable from the lorabot container
    assert any(volume.endswith(":/models:ro") for volume in services["llama-server"]["volumes"])


def models_file_on_host(bot: dict) -> Path:
    """The host file behind the container's LORABOT_MODELS_FILE, through its bind mount."""
    inside = PurePosixPath(bot["environment"]["LORABOT_MODELS_FILE"])
    for volume in bot["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./") and inside.is_relative_to(target):
            return ROOT / source / inside.relative_to(target)
    raise AssertionError(f"no mount holds {inside}")


def test_models_add_can_write_the_models_file_in_the_container(compose):
    """`lorabot models add` inside the container replaces the file by a rename next to it and takes
    a lock beside it: the models file's folder is mounted, writable; a file mounted on its own
    (read-only before) cannot be replaced (EBUSY) and read-only cannot be written at all."""
    bot = compose["services"]["lorabot"]
    inside = PurePosixPath(bot["environment"]["LORABOT_MODELS_FILE"])
    mount = next(v for v in bot["volumes"] if v.startswith("./") and inside.is_relative_to(v.split(":")[1]))
    source, target, *options = mount.split(":")
    assert PurePosixPath(target) == inside.parent  # the folder, not the file
    assert (ROOT / source).is_dir() and models_file_on_host(bot).is_file()
    assert "ro" not in ",".join(options).split(",")


# -- metrics and health (issue 26, docs/operations.md) --------------------------------------------------
def test_prometheus_scrapes_the_bot_and_the_health_check_asks_readyz(compose):
    services = compose["services"]
    environment = services["lorabot"]["environment"]
    settings = load_core_settings(
        _env_file=None,
        metrics_port=environment["LORABOT_METRICS_PORT"],
        metrics_host=environment["LORABOT_METRICS_HOST"],
    )  # what lorabot's settings make of them
    assert settings.metrics_host == "0.0.0.0"  # reachable from the prometheus container
    check = " ".join(services["lorabot"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{settings.metrics_port}/readyz" in check
    prometheus = services["prometheus"]
    mount = next(v for v in prometheus["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    targets = [t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"lorabot:{settings.metrics_port}"]
    assert all(port.startswith("127.0.0.1:") for port in prometheus["ports"])  # not on every interface


async def test_the_health_check_command_passes_only_when_ready(compose, tmp_path):
    """The lorabot service's health check, run as Docker runs it, against a real metrics server."""
    test = compose["services"]["lorabot"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    service = make_service(tmp_path)
    await service.start()
    server = OpsServer(service)
    port = await server.start()
    command = [sys.executable, *(part.replace(":9400/", f":{port}/") for part in test[2:])]

    async def exit_code() -> int:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        return await process.wait()

    try:
        assert await exit_code() == 0
        service.registry.add("gone", tmp_path / "missing.gguf", description="no file")
        service.settings = service.settings.model_copy(update={"default_model": "gone"})
        assert await exit_code() != 0  # 503: not ready
    finally:
        await server.close()
        await service.close()
