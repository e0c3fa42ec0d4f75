"""Images: one row per object version; its id is the vector label.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("bucket", sa.String(255), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("etag", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content_type", sa.String(128), nullable=True),
        sa.Column("width", sa.Integer, nullable=True),
        sa.Column("height", sa.Integer, nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("indexed", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("shard", sa.Integer, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.UniqueConstraint("bucket", "key", "etag", name="uq_images_bucket_key_etag"),
    )
    op.create_index("ix_images_bucket_key", "images", ["bucket", "key"])
    op.create_index("ix_images_status", "images", ["status"])
    op.create_index("ix_images_created", "images", ["created"])


def downgrade() -> None:
    op.drop_table("images")
