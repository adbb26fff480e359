"""The daemon's lease: one row saying which daemon leads, and until when.

The lock that made one daemon the leader (an advisory lock on PostgreSQL, a file lock on
SQLite) outlived a frozen leader: one stopped with SIGSTOP, or whose network went silent,
kept it, and no standby took over.  A lease the leader renews, checked by the standbys
and by each of the leader's own commits, ends with whatever stops the leader (see
corral.daemon.leader).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    lease = op.create_table(
        "daemon_lease",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("holder", sa.String(255), nullable=True),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires", sa.Float(), nullable=True),
        sa.Column("since", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(lease, [{"id": 1, "holder": None, "token": 0, "expires": None, "since": None}])


def downgrade() -> None:
    op.drop_table("daemon_lease")
