"""Issue 15: samples carry their split (train | eval); checkpoints can be let go by retention, and
downloads in progress hold leases that keep a let-go checkpoint's files until they end.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 04:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch_op:
        batch_op.add_column(sa.Column("split", sa.String(length=10), server_default="train", nullable=False))
        batch_op.drop_constraint("uq_samples_job_id_step_index", type_="unique")
        batch_op.create_unique_constraint(
            "uq_samples_job_id_split_step_index", ["job_id", "split", "step", "index"]
        )
    with op.batch_alter_table("checkpoints") as batch_op:
        batch_op.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "checkpoint_downloads",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("checkpoint_id", sa.String(length=40), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
            name=op.f("fk_checkpoint_downloads_checkpoint_id_checkpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoint_downloads")),
    )
    op.create_index(
        "ix_checkpoint_downloads_checkpoint_id_expires_at",
        "checkpoint_downloads",
        ["checkpoint_id", "expires_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_checkpoint_downloads_checkpoint_id_expires_at", table_name="checkpoint_downloads")
    op.drop_table("checkpoint_downloads")
    with op.batch_alter_table("checkpoints") as batch_op:
        batch_op.drop_column("purged_at")
        batch_op.drop_column("deleted_at")
    # Eval samples reuse train samples' (step, index): they cannot survive the narrower constraint.
    op.execute("DELETE FROM samples WHERE split <> 'train'")
    with op.batch_alter_table("samples") as batch_op:
        batch_op.drop_constraint("uq_samples_job_id_split_step_index", type_="unique")
        batch_op.create_unique_constraint("uq_samples_job_id_step_index", ["job_id", "step", "index"])
        batch_op.drop_column("split")
