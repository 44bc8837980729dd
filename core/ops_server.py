"""The operator's port: `/metrics`, `/healthz` and `/readyz` of one process (docs/operations.md).

One small aiohttp server on the bot's own event loop, started by `lorabot run` (and
`lorabot discord|telegram`) when LORABOT_METRICS_PORT is set; nothing listens otherwise.

- `/metrics`: the Prometheus text format of `core.metrics.REGISTRY`.
- `/healthz` (liveness): 200 while the process is alive and its event loop responsive — a
  timer that should fire every `LAG_INTERVAL_S` ran within `lag_limit_s` of when it was due.
  A blocked loop does not answer at all (the probe's own timeout catches that).
- `/readyz` (readiness): 200 when the store answers `SELECT 1`, the default model can be loaded
  (a local file that is there and did not fail to load; a remote model with an endpoint that
  answers) and every platform this process runs is connected; 503 with the failing check
  otherwise. Each check has `check_timeout_s`.

The bodies are small JSON objects, with no id, token or password in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import httpx
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core import metrics

if TYPE_CHECKING:
    from core.service import ChatService

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 0.5


class OpsServer:
    def __init__(
        self,
        service: ChatService,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lag_limit_s: float = 10.0,
        check_timeout_s: float = 3.0,
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.lag_limit_s = lag_limit_s
        self.check_timeout_s = check_timeout_s
        self.last_beat = time.monotonic()
        self.lag_s = 0.0
        self._runner: web.AppRunner | None = None
        self._beats: asyncio.Task[None] | None = None
        self._collector = metrics.ServiceCollector(service)

    async def start(self) -> int:
        """Listen; returns the port (the one the OS chose for port 0)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = next(
            address[1] for address in runner.addresses if isinstance(address, tuple) and len(address) >= 2
        )
        metrics.REGISTRY.register(self._collector)
        self._beats = asyncio.create_task(self._beat(), name="lorabot-loop-lag")
        log.info("metrics, /healthz and /readyz on http://%s:%d", self.host, self.port)
        return self.port

    async def close(self) -> None:
        if self._beats is not None:
            self._beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beats
            self._beats = None
        if self._runner is not None:
            with contextlib.suppress(KeyError):
                metrics.REGISTRY.unregister(self._collector)
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- liveness ------------------------------------------------------------------------------
    async def _beat(self) -> None:
        """How late the loop runs a timer: the lag of a loop that is busy or was blocked."""
        while True:
            due = time.monotonic() + LAG_INTERVAL_S
            await asyncio.sleep(LAG_INTERVAL_S)
            self.last_beat = time.monotonic()
            self.lag_s = max(0.0, self.last_beat - due)
            metrics.LOOP_LAG.set(self.lag_s)

    def alive(self) -> tuple[bool, dict[str, Any]]:
        since_beat = time.monotonic() - self.last_beat
        beating = self._beats is not None and not self._beats.done()
        ok = beating and since_beat < self.lag_limit_s + LAG_INTERVAL_S and self.lag_s < self.lag_limit_s
        return ok, {"loop_lag_s": round(self.lag_s, 4), "since_last_beat_s": round(since_beat, 3)}

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, detail = self.alive()
        return web.json_response({"status": "ok" if ok else "unhealthy", **detail}, status=200 if ok else 503)

    # -- readiness -----------------------------------------------------------------------------
    async def ready(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Every check, run at once: (all passed, name -> {"ok": bool, "detail": str})."""
        names = ("store", "model", "platforms")
        results = await asyncio.gather(
            self._bounded(self._store()), self._bounded(self._model()), self._bounded(self._platforms())
        )
        checks = {name: {"ok": ok, "detail": text} for name, (ok, text) in zip(names, results, strict=True)}
        return all(check["ok"] for check in checks.values()), checks

    async def _bounded(self, check: Any) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self.check_timeout_s + 1):
                result: tuple[bool, str] = await check
                return result
        except TimeoutError:
            return False, f"no answer within {self.check_timeout_s + 1:.0f} s"
        except Exception as error:  # noqa: BLE001 - a failing check is an answer, never a 500
            return False, type(error).__name__

    async def _store(self) -> tuple[bool, str]:
        store = self.service.history
        if store is None:
            return False, "not opened"
        try:
            await store.ping(self.check_timeout_s)
        except Exception as error:  # noqa: BLE001 - StoreUnavailable and anything under it
            return False, f"unreachable ({type(error).__name__})"
        return True, f"{store.dialect} answers"

    async def _model(self) -> tuple[bool, str]:
        service = self.service
        name = service.settings.default_model
        if name not in service.registry:
            return False, f"{name} is not registered"
        entry = service.registry.get(name)
        if (reason := service.pool.load_failure(name)) is not None:
            return False, f"{name} failed to load: {reason}"
        if entry.path is not None:
            if name in service.pool.loaded:
                return True, f"{name} loaded"
            if os.access(entry.path, os.R_OK):
                return True, f"{name} loadable"
            return False, f"{name}: its file is missing or unreadable"
        states = service.pool.endpoint_health().get(name)
        if states is not None:  # loaded: its own health checks know
            up = sum(1 for _, is_up in states if is_up)
            return up > 0, f"{name}: {up} of {len(states)} endpoints up"
        answering = await asyncio.gather(*(self._answers(url) for url in entry.urls))
        return any(answering), f"{name}: {sum(answering)} of {len(answering)} endpoints answer"

    async def _answers(self, url: str) -> bool:
        """A remote endpoint answers `GET …/models` (401 or 503 count: a server is there)."""
        try:
            async with httpx.AsyncClient(timeout=self.check_timeout_s) as client:
                response = await client.get(f"{url}/models")
        except httpx.HTTPError:
            return False
        return response.status_code < 500 or response.status_code == 503

    async def _platforms(self) -> tuple[bool, str]:
        states = dict(metrics.platforms)
        if not states:
            return True, "none run here"
        down = sorted(name for name, up in states.items() if not up)
        if down:
            return False, "not connected: " + ", ".join(down)
        return True, "connected: " + ", ".join(sorted(states))

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, checks = await self.ready()
        body = {"status": "ready" if ok else "not ready", "checks": checks}
        return web.json_response(body, status=200 if ok else 503)

    # -- metrics -------------------------------------------------------------------------------
    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
