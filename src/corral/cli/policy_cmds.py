"""Commands on policies: check, schema, plan."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Placeholder until the policy language lands."""
