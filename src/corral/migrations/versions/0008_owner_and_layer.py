"""A job's owner (who submitted it), a frame's layer (its task type) and the hosts kept away from it.

Flamenco blocklists a worker per job and task type, Afanasy's sick-host rule counts the
users whose jobs a host failed, and a notice about a job goes to whoever submitted it:
policies read `owner` and `layer` (docs/policies.md).  A retry may keep the hosts that
failed a frame away from it (Flamenco, Afanasy's errors_task_same_host): `avoid_hosts`.  Both are nullable: a store from
before this release, and a supervisor that does not say, leave them unknown.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ALTER TABLE on both databases: a batch (copy and move) on SQLite would drop
    # the change-tracking triggers of migrations 0003 and 0004 with the old table.
    op.add_column("jobs", sa.Column("owner", sa.String(255), nullable=True))
    op.add_column("frames", sa.Column("layer", sa.String(255), nullable=True))
    op.add_column("frames", sa.Column("avoid_hosts", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("frames", "avoid_hosts")  # SQLite 3.35 and later drop a column in place
    op.drop_column("frames", "layer")
    op.drop_column("jobs", "owner")
