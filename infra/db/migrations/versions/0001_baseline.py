"""The job store as it was before migrations (api_keys, models, datasets, jobs, job_events,
artifacts, model_analyses).

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from alembic import op

from infra.db.migrations import baseline

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The frozen snapshot, created in one go: the same DDL that create_all emitted, so
    # fresh and pre-migration databases end up identical.
    baseline.build().create_all(op.get_bind())


def downgrade() -> None:
    baseline.build().drop_all(op.get_bind())
