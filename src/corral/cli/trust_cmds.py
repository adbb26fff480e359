"""Commands: corral test, explain, replay (issue 6)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds this module's commands to the app."""
