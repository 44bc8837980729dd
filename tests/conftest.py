"""Shared fixtures. The real embedded model is loaded once per session (it takes ~1 s)."""

from __future__ import annotations

import os

import pytest

from core.embedded import embedded_model_path
from support.postgres import PostgresServer, start_postgres


@pytest.fixture(scope="session")
def embedded_gguf():
    return embedded_model_path()


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server for the session (tests/support/postgres.py); skipped only where
    the server binaries are absent (CI must have them: `make setup-dev` installs them)."""
    server = start_postgres()
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing: make setup-dev installs them")
        pytest.skip("PostgreSQL server binaries not installed (make setup-dev installs them)")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres_server.fresh_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """The history store's URL, once per backend: the store tests run against both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'history.sqlite3'}"
    return request.getfixturevalue("postgres_url")
