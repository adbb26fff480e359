"""Change tracking: a `rev` on every farm row, stamped by the database itself.

The daemon keeps the farm in memory and reads only the rows changed since its last
cycle.  Writers (corral, `corral ingest`, or a supervisor writing SQL directly) need
not cooperate: triggers stamp each inserted or updated row.

- PostgreSQL: `rev` is the writing transaction's id (`txid_current()`).  A reader
  remembers `pg_snapshot_xmin` of its snapshot: every transaction below it had
  finished, so the next read of `rev >= mark` misses nothing, even from transactions
  that were still running (re-reading a few rows twice is harmless).
- SQLite: writers are serialised; an update stamps `rev` with the current value of a
  counter.  Before each read, a short write transaction stamps the rows inserted since
  (inserted rows start with no `rev`) and moves the counter on; the next read takes
  `rev >= ` the new value, or no `rev` yet (see corral.store.changes).  Since 0004 a
  trigger stamps inserted rows too.
Deleting farm rows (only `corral load --replace` does) bumps `generation`, which
makes the daemon read the whole farm again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: table -> the columns that identify a row (for SQLite's AFTER triggers)
TRACKED = {
    "jobs": ("id",),
    "frames": ("job_id", "number"),
    "instances": ("id",),
    "workers": ("name",),
    "frame_runs": ("id",),
    "job_dependencies": ("job_id", "depends_on"),
}


def upgrade() -> None:
    op.create_table(
        "revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO revision (id, value, generation) VALUES (1, 1, 1)")
    for name in TRACKED:
        op.add_column(name, sa.Column("rev", sa.BigInteger(), nullable=True))
        op.create_index(f"ix_{name}_rev", name, ["rev"])
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION corral_stamp_rev() RETURNS trigger AS $$
            BEGIN NEW.rev := txid_current(); RETURN NEW; END $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            """
            CREATE FUNCTION corral_bump_generation() RETURNS trigger AS $$
            BEGIN UPDATE revision SET generation = generation + 1 WHERE id = 1; RETURN NULL; END $$
            LANGUAGE plpgsql
            """
        )
        for name in TRACKED:
            op.execute(
                f"CREATE TRIGGER {name}_rev BEFORE INSERT OR UPDATE ON {name} "
                "FOR EACH ROW EXECUTE FUNCTION corral_stamp_rev()"
            )
            op.execute(
                f"CREATE TRIGGER {name}_deleted AFTER DELETE ON {name} "
                "FOR EACH STATEMENT EXECUTE FUNCTION corral_bump_generation()"
            )
    else:
        for name, key in TRACKED.items():
            where = " AND ".join(f"{col} = NEW.{col}" for col in key)
            stamp = f"UPDATE {name} SET rev = (SELECT value FROM revision WHERE id = 1) WHERE {where};"  # noqa: S608 - fixed names
            op.execute(f"CREATE TRIGGER {name}_rev_update AFTER UPDATE ON {name} BEGIN {stamp} END")
            op.execute(
                f"CREATE TRIGGER {name}_deleted AFTER DELETE ON {name} "  # noqa: S608 - fixed names
                "BEGIN UPDATE revision SET generation = generation + 1 WHERE id = 1; END"
            )


def downgrade() -> None:
    bind = op.get_bind()
    for name in TRACKED:
        if bind.dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {name}_rev ON {name}")
            op.execute(f"DROP TRIGGER IF EXISTS {name}_deleted ON {name}")
        else:
            for suffix in ("rev_update", "deleted"):
                op.execute(f"DROP TRIGGER IF EXISTS {name}_{suffix}")
        op.drop_index(f"ix_{name}_rev", table_name=name)
        op.drop_column(name, "rev")
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS corral_stamp_rev()")
        op.execute("DROP FUNCTION IF EXISTS corral_bump_generation()")
    op.drop_table("revision")
