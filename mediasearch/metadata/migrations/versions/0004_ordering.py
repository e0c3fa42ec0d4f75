"""Ordering of one key's events: the S3 sequencer of each version, a removal record per key.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:  # batch: SQLite cannot ALTER most things in place
        batch.add_column(sa.Column("sequencer", sa.String(64), nullable=True))
    op.create_table(
        "removals",
        sa.Column("bucket", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(1024), primary_key=True),
        sa.Column("sequencer", sa.String(64), nullable=True),
        sa.Column("removed", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("removals")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("sequencer")
