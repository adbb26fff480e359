"""Drop two indexes no query reads, which every feed write paid for.

- `ix_frames_updated_at` dates from the first schema, when a daemon's incremental read
  was meant to find changed frames by `updated_at`; change tracking by `rev` (0003)
  replaced that.  Every frame the feed writes changes `updated_at`, so it was a B-tree
  entry moved on every frame event.
- `ix_frame_runs_host_finished` was meant for a host's recent failures; corral counts
  those from the farm it holds in memory (`corral.facts.aggregates`) and reads runs only
  whole, by job or by `rev`.  Its keys (host, time) land all over the B-tree: a frame
  run's insert took 8.5 us with it and 3.0 without, with a million frames stored.

Together they were about a fifth of SQLite's share of applying the feed at that size
(docs/benchmarks.md, "The feed").  The columns stay; an operator who queries runs by
host can create the index again (`downgrade` shows how).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_frames_updated_at", table_name="frames")
    op.drop_index("ix_frame_runs_host_finished", table_name="frame_runs")


def downgrade() -> None:
    op.create_index("ix_frame_runs_host_finished", "frame_runs", ["host", "finished_at"])
    op.create_index("ix_frames_updated_at", "frames", ["updated_at"])
