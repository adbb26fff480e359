"""Commands: corral job submit, corral ingest (issue 7)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds this module's commands to the app."""
