"""Shared fixtures. The real embedded model is loaded once per session (it takes ~1 s)."""

from __future__ import annotations

import pytest

from core.embedded import embedded_model_path


@pytest.fixture(scope="session")
def embedded_gguf():
    return embedded_model_path()
