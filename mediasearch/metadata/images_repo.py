"""Images: the read side shared by the gateway and the indexer.

The indexer (issue 6) adds the write side here (reserve, mark indexed/failed/removed); every
function takes an open session and never commits, like :mod:`mediasearch.metadata.manifest_repo`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mediasearch.metadata.db import translated
from mediasearch.metadata.models import INDEXED, ImageRow


@dataclass(frozen=True)
class ImageRecord:
    """An images row as plain data (no session attached)."""

    image_id: int
    bucket: str
    key: str
    etag: str
    size: int
    content_type: str | None
    width: int | None
    height: int | None
    created: datetime
    indexed: datetime | None
    tags: tuple[str, ...]
    model_version: str | None
    shard: int | None
    status: str
    error: str | None

    @classmethod
    def from_row(cls, row: ImageRow) -> ImageRecord:
        return cls(
            image_id=row.id,
            bucket=row.bucket,
            key=row.key,
            etag=row.etag,
            size=row.size,
            content_type=row.content_type,
            width=row.width,
            height=row.height,
            created=_aware(row.created),
            indexed=_aware(row.indexed) if row.indexed is not None else None,
            tags=tuple(row.tags or ()),
            model_version=row.model_version,
            shard=row.shard,
            status=row.status,
            error=row.error,
        )


def get_images(session: Session, ids: Iterable[int], *, only_indexed: bool = True) -> dict[int, ImageRecord]:
    """The rows of ``ids`` in one query (missing ids are simply absent from the result)."""
    wanted = sorted(set(int(i) for i in ids))
    if not wanted:
        return {}
    query = select(ImageRow).where(ImageRow.id.in_(wanted))
    if only_indexed:
        query = query.where(ImageRow.status == INDEXED)
    with translated("reading image metadata"):
        return {row.id: ImageRecord.from_row(row) for row in session.scalars(query)}


def _aware(value: datetime) -> datetime:
    """SQLite hands timestamps back naive; they were written in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
