"""Index generations record the width of their vectors (the model upgrade issue's generation is
model version + width + quantizer + segments).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("index_generations") as batch:  # batch: SQLite
        batch.add_column(sa.Column("dim", sa.Integer, nullable=True))  # null: built before 0008


def downgrade() -> None:
    with op.batch_alter_table("index_generations") as batch:
        batch.drop_column("dim")
