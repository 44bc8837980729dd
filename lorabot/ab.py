"""`lorabot models ab`: live A/B of a candidate against a served model (issue 24; being written)."""

from __future__ import annotations

import typer


def mount(app: typer.Typer) -> None:
    """Register the `ab` command on `lorabot models`."""
