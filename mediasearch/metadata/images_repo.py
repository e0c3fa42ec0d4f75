"""Images: the read side shared by the gateway and the indexer, and the indexer's write side.

Every function takes an open session and never commits, like
:mod:`mediasearch.metadata.segment_manifest`, so the indexer can mark rows, publish segments and add
tombstones in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.orm import Session

from mediasearch.metadata.db import translated, utc
from mediasearch.metadata.models import FAILED, INDEXED, PENDING, REMOVED, ImageRow


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
    def from_row(cls, row: Any) -> ImageRecord:
        """From anything with the images columns as attributes (ORM row, Core row, named tuple)."""
        return cls(
            image_id=row.id,
            bucket=row.bucket,
            key=row.key,
            etag=row.etag,
            size=row.size,
            content_type=row.content_type,
            width=row.width,
            height=row.height,
            created=utc(row.created),
            indexed=utc(row.indexed) if row.indexed is not None else None,
            tags=tuple(row.tags or ()),
            model_version=row.model_version,
            shard=row.shard,
            status=row.status,
            error=row.error,
        )


def get_images(
    db: Session | Connection, ids: Iterable[int], *, only_indexed: bool = True
) -> dict[int, ImageRecord]:
    """The rows of ``ids`` in one query (missing ids are simply absent from the result)."""
    wanted = sorted(set(int(i) for i in ids))
    if not wanted:
        return {}
    # Plain columns, not ORM objects: this is on the query path, and skipping the identity map and
    # object construction saves about a third of the call.
    query = select(*ImageRow.__table__.columns).where(ImageRow.id.in_(wanted))
    if only_indexed:
        query = query.where(ImageRow.status == INDEXED)
    with translated("reading image metadata"):
        return {row.id: ImageRecord.from_row(row) for row in db.execute(query)}


def reader(engine: Engine) -> Engine:
    """The query path's view of ``engine``: autocommit, so a lookup is one round trip (no BEGIN,
    no ROLLBACK when the connection goes back to the pool) and holds no snapshot open. Under a
    saturated CPU every round trip waits for PostgreSQL to be scheduled, so three cost three
    waits; measured on the gateway at concurrency 16, the transaction's BEGIN/ROLLBACK were a
    third of its metadata stage."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def lookup(engine: Engine, ids: Iterable[int]) -> dict[int, ImageRecord]:
    """:func:`get_images` on a pooled connection of ``engine`` (use :func:`reader` for reads)."""
    with engine.connect() as connection:
        return get_images(connection, ids)


# -- write side (the indexer) ------------------------------------------------------------------
# Life of a row: reserve() inserts it PENDING (its id becomes the vector label before any segment
# file exists), then ONE transaction marks it INDEXED together with publishing the segment that
# holds its vector (or FAILED with the reason), and supersedes older versions of the same key.


@dataclass(frozen=True)
class NewImage:
    """One object version the indexer is about to index (or record as failed)."""

    bucket: str
    key: str
    etag: str
    size: int = 0
    content_type: str | None = None
    created: datetime | None = None  # the object's last-modified time: orders versions of a key


@dataclass(frozen=True)
class Reservation:
    """The row of one (bucket, key, etag): ``status`` PENDING means "index it with this id"."""

    image_id: int
    status: str


@dataclass(frozen=True)
class Unindexed:
    """A row taken out of the index: its vector (if it had one) must be tombstoned in ``shard``."""

    image_id: int
    shard: int | None
    had_vector: bool


def status_of(session: Session, bucket: str, key: str, etag: str) -> str | None:
    """The status of one object version, or None when it was never seen."""
    with translated("reading image status"):
        return session.scalar(
            select(ImageRow.status).where(
                ImageRow.bucket == bucket, ImageRow.key == key, ImageRow.etag == etag
            )
        )


def recorded_keys(session: Session, bucket: str, prefix: str = "") -> set[str]:
    """Keys under ``prefix`` in ``bucket`` with an INDEXED or FAILED version (what ``--prune``
    compares with a listing)."""
    query = (
        select(ImageRow.key)
        .distinct()
        .where(ImageRow.bucket == bucket, ImageRow.status.in_((INDEXED, FAILED)))
    )
    if prefix:
        query = query.where(ImageRow.key.startswith(prefix, autoescape=True))
    with translated("reading recorded keys"):
        return set(session.scalars(query))


def known_versions(session: Session, bucket: str, keys: Sequence[str]) -> dict[tuple[str, str], str]:
    """``{(key, etag): status}`` of every row of these keys in ``bucket`` (one query)."""
    if not keys:
        return {}
    query = select(ImageRow.key, ImageRow.etag, ImageRow.status).where(
        ImageRow.bucket == bucket, ImageRow.key.in_(sorted(set(keys)))
    )
    with translated("reading image versions"):
        return {(k, e): s for k, e, s in session.execute(query)}


def reserve(session: Session, images: Sequence[NewImage]) -> list[Reservation]:
    """The row of each image, inserting PENDING rows for versions never seen (no commit).

    An existing PENDING row is returned as is: a previous run reserved it and died before
    publishing, so its id was never served and is safe to reuse. Two indexers inserting the same
    version at once make one of them fail the unique constraint (Conflict): retry the reservation.
    """
    out: list[Reservation] = []
    seen: dict[tuple[str, str, str], ImageRow] = {}
    with translated("reserving image ids"):
        for image in images:
            ident = (image.bucket, image.key, image.etag)
            row = seen.get(ident)
            if row is None:
                row = session.scalars(
                    select(ImageRow).where(
                        ImageRow.bucket == image.bucket,
                        ImageRow.key == image.key,
                        ImageRow.etag == image.etag,
                    )
                ).first()
            if row is None:
                row = ImageRow(
                    bucket=image.bucket,
                    key=image.key,
                    etag=image.etag,
                    size=image.size,
                    content_type=image.content_type,
                    created=image.created or datetime.now(UTC),
                    tags=[],
                    status=PENDING,
                )
                session.add(row)
                session.flush()
            seen[ident] = row
            out.append(Reservation(row.id, row.status))
    return out


def lock_pending(session: Session, ids: Sequence[int]) -> set[int]:
    """Lock the rows (PostgreSQL ``FOR UPDATE``) and return those of ``ids`` no longer PENDING:
    another indexer published or failed them first, so this one must drop them."""
    if not ids:
        return set()
    query = select(ImageRow.id, ImageRow.status).where(ImageRow.id.in_(list(ids))).with_for_update()
    with translated("locking reserved images"):
        found = {int(i): str(st) for i, st in session.execute(query)}
    return {i for i in ids if found.get(i) != PENDING}


def mark_indexed(
    session: Session,
    rows: Sequence[tuple[int, int, int, int]],
    *,
    model_version: str,
    when: datetime | None = None,
) -> None:
    """Rows ``(id, shard, width, height)`` whose vectors the same transaction publishes."""
    when = when or datetime.now(UTC)
    with translated("marking images indexed"):
        for image_id, shard, width, height in rows:
            session.execute(
                update(ImageRow)
                .where(ImageRow.id == image_id)
                .values(
                    status=INDEXED,
                    shard=shard,
                    width=width,
                    height=height,
                    model_version=model_version,
                    indexed=when,
                    error=None,
                )
            )


def mark_failed(session: Session, image_id: int, error: str) -> None:
    """A version that cannot be indexed (corrupt, truncated, too large, not an image)."""
    with translated("marking an image failed"):
        session.execute(
            update(ImageRow).where(ImageRow.id == image_id).values(status=FAILED, error=error[:2000])
        )


def supersede(session: Session, bucket: str, key: str) -> list[Unindexed]:
    """Keep only the newest finished version of a key (by object time, then id); older INDEXED or
    FAILED versions become REMOVED. Returns them, so the caller tombstones their vectors."""
    with translated("superseding old versions"):
        rows = list(
            session.scalars(
                select(ImageRow).where(
                    ImageRow.bucket == bucket, ImageRow.key == key, ImageRow.status.in_((INDEXED, FAILED))
                )
            )
        )
        if len(rows) < 2:
            return []
        newest = max(rows, key=lambda r: (utc(r.created), r.id))
        return [_remove(r) for r in rows if r is not newest]


def remove_object(session: Session, bucket: str, key: str, keep_etag: str | None = None) -> list[Unindexed]:
    """An ObjectRemoved event: every finished version of the key becomes REMOVED, except
    ``keep_etag``, the version in the bucket when the event was handled (re-created since).

    PENDING rows are left alone: another indexer may be publishing a version created after the
    delete (and a row left PENDING by a crash is never served)."""
    with translated("removing an object"):
        rows = session.scalars(
            select(ImageRow).where(
                ImageRow.bucket == bucket, ImageRow.key == key, ImageRow.status.in_((INDEXED, FAILED))
            )
        )
        return [_remove(r) for r in rows if keep_etag is None or r.etag != keep_etag]


def _remove(row: ImageRow) -> Unindexed:
    gone = Unindexed(row.id, row.shard, row.status == INDEXED)
    row.status = REMOVED
    return gone


def count_by_status(session: Session, bucket: str | None = None) -> dict[str, int]:
    """``{status: rows}``, for reports and tests."""
    query = select(ImageRow.status, func.count()).group_by(ImageRow.status)
    if bucket is not None:
        query = query.where(ImageRow.bucket == bucket)
    with translated("counting images"):
        return {str(status): int(n) for status, n in session.execute(query)}
