"""Jobs carry the training run they belong to (spec.run), indexed for the API filter and the
dashboard's rate history.

Revision ID: 0002_issue13
Revises: 0001
Create Date: 2026-11-30 10:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_issue13"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("run", sa.String(length=200), nullable=True))
        batch.create_index(
            "ix_jobs_owner_run_created", ["owner_id", "run", "created_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_owner_run_created")
        batch.drop_column("run")
