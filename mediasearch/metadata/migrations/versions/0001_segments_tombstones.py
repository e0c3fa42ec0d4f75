"""Segment manifest and tombstones.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("uri", sa.String(1024), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("index_type", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_segments_shard_state", "segments", ["shard", "state"])
    op.create_table(
        "tombstones",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("shard", sa.Integer, nullable=True),
        sa.Column("image_id", sa.BigInteger, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tombstones_shard", "tombstones", ["shard"])


def downgrade() -> None:
    op.drop_table("tombstones")
    op.drop_table("segments")
