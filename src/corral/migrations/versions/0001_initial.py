"""The initial schema: farm tables, dependencies, the transition log and settings.

Written out by hand (not `metadata.create_all`) so that this revision stays what it
was when later revisions change the tables.

Revision ID: 0001
Revises:
Create Date: 2024-06-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from corral.store.tables import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("hold", sa.String(16), nullable=False),
        sa.Column("blocked_by", sa.String(255), nullable=True),
        sa.Column("retry_limit", sa.Integer(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        _ts("submitted_at"),
        _ts("state_since"),
        _ts("last_retry_at"),
        sa.Column("version", sa.Integer(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("state_since"),
        sa.Column("version", sa.Integer(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("state_since"),
        sa.Column("version", sa.Integer(), nullable=False),
        _ts("updated_at"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_instances_job", "instances", ["job_id"])
    op.create_table(
        "frames",
        sa.Column("job_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("instance", sa.String(255), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        _ts("started_at"),
        _ts("finished_at"),
        _ts("state_since"),
        sa.Column("version", sa.Integer(), nullable=False),
        _ts("updated_at"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "number"),
    )
    op.create_index("ix_frames_job_state", "frames", ["job_id", "state"])
    op.create_index("ix_frames_updated_at", "frames", ["updated_at"])
    op.create_table(
        "frame_runs",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("instance", sa.String(255), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        _ts("started_at"),
        _ts("finished_at"),
        sa.ForeignKeyConstraint(["job_id", "number"], ["frames.job_id", "frames.number"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_frame_runs_host_finished", "frame_runs", ["host", "finished_at"])
    op.create_index("ix_frame_runs_job", "frame_runs", ["job_id", "number"])
    op.create_table(
        "job_dependencies",
        sa.Column("job_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("depends_on", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["depends_on"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "depends_on"),
    )
    op.create_table(
        "frame_dependencies",
        sa.Column("job_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("depends_job", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("depends_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["job_id", "number"], ["frames.job_id", "frames.number"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["depends_job", "depends_number"], ["frames.job_id", "frames.number"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "number", "depends_job", "depends_number"),
    )
    op.create_table(
        "transitions",
        sa.Column("id", BIGID, nullable=False),
        _ts("at", nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("entity_id", sa.String(255), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("policy", sa.String(255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("cycle_id", sa.String(64), nullable=True),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_transitions_entity", "transitions", ["kind", "entity_id"])
    op.create_index("ix_transitions_policy", "transitions", ["policy"])
    op.create_index("ix_transitions_at", "transitions", ["at"])
    op.create_index("ix_transitions_cycle", "transitions", ["cycle_id"])
    op.create_index("ix_transitions_job", "transitions", ["job_id"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    for name in (
        "settings",
        "transitions",
        "frame_dependencies",
        "job_dependencies",
        "frame_runs",
        "frames",
        "instances",
        "workers",
        "jobs",
    ):
        op.drop_table(name)
