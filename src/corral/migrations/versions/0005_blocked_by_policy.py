"""A job a policy blocked names the policy in `blocked_by`, as the planner always did.

Before this release the applier wrote the cycle's actor ("corral") where the planner
and `unblock-when-dependencies-complete` expect the policy's name, so a job that
`keep-dependents-blocked` held was never released under `corral run` once its
dependency completed.  The applier now writes the policy (`Proposal.author`); this
migration mends the jobs blocked that way: each takes the policy of its latest applied
block in the transition log.  A job with no such row keeps what it has.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE jobs SET blocked_by = ("
        " SELECT t.policy FROM transitions t"
        " WHERE t.kind = 'job' AND t.entity_id = CAST(jobs.id AS VARCHAR(255)) AND t.action = 'block'"
        " AND t.applied = TRUE AND t.policy IS NOT NULL ORDER BY t.id DESC LIMIT 1)"
        " WHERE blocked_by = 'corral' AND hold = 'blocked' AND EXISTS ("
        " SELECT 1 FROM transitions t WHERE t.kind = 'job' AND t.entity_id = CAST(jobs.id AS VARCHAR(255))"
        " AND t.action = 'block' AND t.applied = TRUE AND t.policy IS NOT NULL)"
    )


def downgrade() -> None:
    """Nothing to undo: the names it wrote are the ones this release writes."""
