"""Thumbnails: a small WebP of each indexed image, beside its row (issue 18).

Rows are written and deleted by the indexer's publishing transaction, with the images rows they
belong to; deleting an images row deletes its thumbnail. On SQLite (foreign keys are on, see
``metadata/db.py``) a later migration that rebuilds ``images`` in batch mode drops the table it
copies from, which would cascade here: such a migration must turn ``PRAGMA foreign_keys`` off first.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "thumbnails",
        sa.Column(
            "image_id",
            sa.BigInteger,
            sa.ForeignKey("images.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("thumbnails")
