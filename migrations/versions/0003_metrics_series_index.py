"""An index for chart reads of metrics: (job_id, name, step), carrying the value on Postgres.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 01:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_metrics_job_id_name_step",
        "metrics",
        ["job_id", "name", "step"],
        unique=False,
        postgresql_include=["value"],
    )


def downgrade() -> None:
    op.drop_index("ix_metrics_job_id_name_step", table_name="metrics")
