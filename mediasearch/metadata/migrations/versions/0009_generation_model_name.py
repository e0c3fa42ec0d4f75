"""Index generations record their model's name in the model repository: where gateways and
indexers find the encoder of a generation a reindex built.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("index_generations") as batch:  # batch: SQLite
        batch.add_column(sa.Column("model_name", sa.String(128), nullable=True))  # null: the deployment's


def downgrade() -> None:
    with op.batch_alter_table("index_generations") as batch:
        batch.drop_column("model_name")
