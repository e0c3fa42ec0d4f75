"""One live row per object version: a removed version no longer blocks the same bytes uploaded again.

Re-uploading byte-identical content to a key whose earlier upload was deleted gives the same ETag;
the unique (bucket, key, etag) constraint made the new upload a "duplicate" of the removed row and
the image never came back. The uniqueness now holds among rows that are not ``removed``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_LIVE = sa.text("status != 'removed'")


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:  # SQLite rebuilds the table to drop a constraint
        batch.drop_constraint("uq_images_bucket_key_etag", type_="unique")
    op.create_index(
        "uq_images_live_version",
        "images",
        ["bucket", "key", "etag"],
        unique=True,
        postgresql_where=_LIVE,
        sqlite_where=_LIVE,
    )


def downgrade() -> None:
    op.drop_index("uq_images_live_version", "images")
    with op.batch_alter_table("images") as batch:
        batch.create_unique_constraint("uq_images_bucket_key_etag", ["bucket", "key", "etag"])
