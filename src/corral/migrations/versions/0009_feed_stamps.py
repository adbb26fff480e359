"""SQLite: a writer that stamps `rev` itself is not stamped again by the update trigger.

0003's update trigger rewrote every updated farm row a second time, to stamp its `rev`
with the change counter.  The feed's batched writer (corral.store.feedbatch) stamps
the rows it writes itself, with the counter's value read in its own transaction (the
value the trigger would have written: SQLite serialises writers, and the counter moves
only in the daemon's own write transaction); the second write of every row was a third
of the cost of applying a batch.  The trigger now fires only when the row's `rev` after
the update is not the counter's value already, which is exactly when it would change
something: every other writer (a supervisor writing SQL, corral's applier) is stamped
as before (a row it updates whose stamp is the counter's value keeps it, as the
trigger would have written it), and `corral.store.changes.advance`'s own stamping is
no longer rewritten either.

PostgreSQL: nothing to do (its trigger sets `rev` before the row is written, once).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

#: table -> the columns that identify a row (as in 0003; a migration keeps its own copy)
TRACKED = {
    "jobs": ("id",),
    "frames": ("job_id", "number"),
    "instances": ("id",),
    "workers": ("name",),
    "frame_runs": ("id",),
    "job_dependencies": ("job_id", "depends_on"),
}


def _create(when: str) -> None:
    for name, key in TRACKED.items():
        where = " AND ".join(f"{col} = NEW.{col}" for col in key)
        stamp = f"UPDATE {name} SET rev = (SELECT value FROM revision WHERE id = 1) WHERE {where};"  # noqa: S608 - fixed names
        op.execute(f"DROP TRIGGER IF EXISTS {name}_rev_update")
        op.execute(f"CREATE TRIGGER {name}_rev_update AFTER UPDATE ON {name}{when} BEGIN {stamp} END")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _create(" WHEN NEW.rev IS NOT (SELECT value FROM revision WHERE id = 1)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _create("")
