"""SQLite: an inserted farm row is stamped by a trigger, as an updated one is.

0003 left inserted rows without a `rev` until the daemon's next read stamped them
(`corral.store.changes.advance`), in a write transaction of the daemon's own: with a
million frames, about a thousand new runs a cycle, each rewritten with its index
entry and the pages written to the log again, inside the daemon's cycle (about
1.3 ms of a 100k-frame steady cycle, 5 to 8 ms at 1M).  Stamped in the writer's own
transaction, whose pages are dirty already, the daemon's stamp only moves the
counter on.  `advance` still stamps any row that has no `rev` (written with the
triggers off, say), so no read finds more or less than before.

Rows inserted with a `rev` (a whole farm loaded in bulk, `Store.load_farm`) are left
as they are.  PostgreSQL: nothing to do, its trigger stamps inserts already.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
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


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name, key in TRACKED.items():
        where = " AND ".join(f"{col} = NEW.{col}" for col in key)
        stamp = f"UPDATE {name} SET rev = (SELECT value FROM revision WHERE id = 1) WHERE {where};"  # noqa: S608 - fixed names
        op.execute(f"CREATE TRIGGER {name}_rev_insert AFTER INSERT ON {name} WHEN NEW.rev IS NULL BEGIN {stamp} END")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name in TRACKED:
        op.execute(f"DROP TRIGGER IF EXISTS {name}_rev_insert")
