"""`lorabot models promote`: the promotion gate (issue 24; being written)."""

from __future__ import annotations

import typer


def mount(app: typer.Typer) -> None:
    """Register the `promote` command on `lorabot models`."""
