"""Index generations: one trained coarse quantizer per generation, shards owning its lists.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "index_generations",
        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("nlist", sa.Integer, nullable=False),
        sa.Column("num_shards", sa.Integer, nullable=False),
        sa.Column("quantizer_id", sa.String(64), nullable=False),
        sa.Column("quantizer_uri", sa.String(1024), nullable=False),
        sa.Column("vectors", sa.BigInteger, nullable=False),
        sa.Column("imbalance", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_index_generations_state", "index_generations", ["state"])
    with op.batch_alter_table("segments") as batch:  # batch: SQLite cannot ALTER most things in place
        batch.add_column(sa.Column("generation", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("segments") as batch:
        batch.drop_column("generation")
    op.drop_index("ix_index_generations_state", "index_generations")
    op.drop_table("index_generations")
