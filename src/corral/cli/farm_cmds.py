"""Commands on the farm store: db init, load, dump, status, job actions."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Placeholder until the store lands."""
