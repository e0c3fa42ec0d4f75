"""Images: the read side shared by the gateway and the indexer, and the indexer's write side.

Every function takes an open session and never commits, like
:mod:`mediasearch.metadata.segment_manifest`, so the indexer can mark rows, publish segments and add
tombstones in one transaction.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from mediasearch.metadata.db import translated, utc
from mediasearch.metadata.models import (
    FAILED,
    INDEXED,
    PENDING,
    REMOVED,
    ImageRow,
    RemovalRow,
    ThumbnailRow,
)
from mediasearch.objects import sequencer_order


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


def get_thumbnail(db: Session | Connection, image_id: int) -> bytes | None:
    """The thumbnail of an INDEXED image (None: no such image, not indexed, or none was made)."""
    query = (
        select(ThumbnailRow.data)
        .join(ImageRow, ImageRow.id == ThumbnailRow.image_id)
        .where(ThumbnailRow.image_id == int(image_id), ImageRow.status == INDEXED)
    )
    with translated("reading a thumbnail"):
        data = db.execute(query).scalar()
    return bytes(data) if data is not None else None


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


def lookup_thumbnail(engine: Engine, image_id: int) -> bytes | None:
    """:func:`get_thumbnail` on a pooled connection of ``engine``."""
    with engine.connect() as connection:
        return get_thumbnail(connection, image_id)


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
    sequencer: str | None = None  # the create event's S3 sequencer: orders them exactly
    tags: tuple[str, ...] = ()  # this version's tags (S3 metadata, a folder sidecar), normalized


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


def version_of(session: Session, bucket: str, key: str, etag: str) -> tuple[str | None, str | None]:
    """``(status, sequencer)`` of the version's live row; of its newest removed row when it has no
    live one (REMOVED: deleted or replaced, and maybe uploaded again since with the same bytes);
    ``(None, None)`` when it was never seen."""
    query = (
        select(ImageRow.status, ImageRow.sequencer)
        .where(ImageRow.bucket == bucket, ImageRow.key == key, ImageRow.etag == etag)
        .order_by((ImageRow.status == REMOVED).asc(), ImageRow.id.desc())
        .limit(1)
    )
    with translated("reading image status"):
        row = session.execute(query).first()
    return (None, None) if row is None else (str(row[0]), row[1])


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
    """``{(key, etag): status}`` of these keys' versions in ``bucket`` (one query): the live row's
    status, REMOVED when a version has only removed rows."""
    if not keys:
        return {}
    query = select(ImageRow.key, ImageRow.etag, ImageRow.status).where(
        ImageRow.bucket == bucket, ImageRow.key.in_(sorted(set(keys)))
    )
    out: dict[tuple[str, str], str] = {}
    with translated("reading image versions"):
        for k, e, status in session.execute(query):
            if out.get((k, e)) in (None, REMOVED):  # a live row says more than removed ones
                out[(k, e)] = status
    return out


def reserve(session: Session, images: Sequence[NewImage]) -> list[Reservation]:
    """The row of each image, inserting PENDING rows for versions never seen (no commit).

    A version whose rows are all removed gets a new row (the same bytes uploaded again after a
    delete; the caller decided it is not a redelivery). An existing PENDING row is returned as is:
    a previous run reserved it and died before publishing, so its id was never served and is safe
    to reuse. Two indexers inserting the same version at once make one of them fail the unique
    index of live versions (Conflict): retry the reservation.
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
                        ImageRow.status != REMOVED,  # removed rows are history: the bytes came back
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
                    tags=list(image.tags),
                    status=PENDING,
                    sequencer=image.sequencer,
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


def put_thumbnails(session: Session, thumbnails: Sequence[tuple[int, bytes]]) -> None:
    """Thumbnails ``(image id, WebP bytes)`` of the rows the same transaction marks INDEXED."""
    if not thumbnails:
        return
    with translated("writing thumbnails"):
        session.execute(insert(ThumbnailRow), [{"image_id": i, "data": d} for i, d in thumbnails])


def delete_thumbnails(session: Session, ids: Iterable[int]) -> None:
    """Drop the thumbnails of rows the same transaction marks REMOVED (those without one: nothing)."""
    wanted = sorted({int(i) for i in ids})
    with translated("deleting thumbnails"):
        for start in range(0, len(wanted), 1000):  # bounded statements, whatever the batch
            chunk = wanted[start : start + 1000]
            session.execute(
                delete(ThumbnailRow).where(ThumbnailRow.image_id.in_(chunk)),
                execution_options={"synchronize_session": False},
            )


def mark_failed(session: Session, image_id: int, error: str) -> None:
    """A version that cannot be indexed (corrupt, truncated, too large, not an image)."""
    with translated("marking an image failed"):
        session.execute(
            update(ImageRow).where(ImageRow.id == image_id).values(status=FAILED, error=error[:2000])
        )


# -- ordering of one key's versions and removals ----------------------------------------------
# S3 delivers events at least once and in any order; each carries a per-key ``sequencer`` that
# orders the events of one key. Commits touching a key are serialised (lock_keys), and decide with
# the sequencers; where those cannot order two events (missing, or equal: a producer that does not
# send real ones), they ask the bucket which version it holds now (``current``), under the same
# lock, so the answer cannot go stale before the transaction commits.

#: The ETag the bucket holds now for the key being decided (None: no object). Called at most once.
Current = Callable[[], "str | None"]


def lock_keys(session: Session, keys: Iterable[tuple[str, str]]) -> None:
    """Serialise the transactions that change these keys' versions until this one ends
    (PostgreSQL advisory transaction locks, taken in sorted order so two indexers cannot deadlock;
    SQLite serialises its writers already)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    with translated("locking object keys"):
        for bucket, key in sorted(set(keys)):
            digest = hashlib.blake2b(f"{bucket}\0{key}".encode(), digest_size=8).digest()
            session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"),
                {"key": int.from_bytes(digest, "big", signed=True)},
            )


def _once(current: Current | None) -> Current | None:
    if current is None:
        return None
    answer: list[str | None] = []

    def ask() -> str | None:
        if not answer:
            answer.append(current())
        return answer[0]

    return ask


def removed_since(
    session: Session, bucket: str, key: str, etag: str, sequencer: str | None, current: Current | None
) -> bool:
    """Whether a version about to be published was deleted after it was fetched: a removal of the
    key was handled that is newer than the version's create event (by sequencer), or, when the
    two cannot be ordered, the bucket no longer holds this version. Call under :func:`lock_keys`."""
    with translated("reading the key's removal"):
        removal = session.get(RemovalRow, (bucket, key))
    if removal is None:
        return False
    order = sequencer_order(sequencer, removal.sequencer)
    if order is not None:
        return order < 0
    return current is not None and current() != etag


def supersede(session: Session, bucket: str, key: str, current: Current | None = None) -> list[Unindexed]:
    """Keep only the newest finished version of a key; older INDEXED or FAILED versions become
    REMOVED. Returns them, so the caller tombstones their vectors. Newest: by sequencer when every
    version has one that orders it; else the version the bucket holds now; else by object time,
    then id (S3's last-modified time has one-second resolution: the last resort)."""
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
        newest = _newest(rows, _once(current))
        return [_remove(r) for r in rows if r is not newest]


def _newest(rows: list[ImageRow], current: Current | None) -> ImageRow:
    by_sequencer = sorted(rows, key=lambda r: (r.sequencer or "").rjust(64, "0"))
    if all(sequencer_order(b.sequencer, a.sequencer) == 1 for a, b in itertools.pairwise(by_sequencer)):
        return by_sequencer[-1]
    if current is not None:
        holding = [r for r in rows if r.etag == current()]
        if holding:
            return max(holding, key=lambda r: r.id)
    return max(rows, key=lambda r: (utc(r.created), r.id))


def remove_object(
    session: Session, bucket: str, key: str, sequencer: str | None = None, current: Current | None = None
) -> list[Unindexed]:
    """An ObjectRemoved event: records it for the key (:func:`removed_since`) and makes REMOVED
    every finished version it deleted: those created before it (by sequencer) and, where the
    sequencers cannot tell, those the bucket no longer holds (a version written again since the
    delete stays). Call under :func:`lock_keys`.

    PENDING rows are left alone: their publisher checks the removal record under the same lock."""
    current = _once(current)
    with translated("removing an object"):
        _record_removal(session, bucket, key, sequencer)
        rows = session.scalars(
            select(ImageRow).where(
                ImageRow.bucket == bucket, ImageRow.key == key, ImageRow.status.in_((INDEXED, FAILED))
            )
        )
        gone = []
        for row in rows:
            order = sequencer_order(row.sequencer, sequencer)
            unknown_and_not_held = order is None and (current is None or current() != row.etag)
            if unknown_and_not_held or (order is not None and order < 0):
                gone.append(_remove(row))
        return gone


def _record_removal(session: Session, bucket: str, key: str, sequencer: str | None) -> None:
    """Keep the key's latest removal (a late, older one does not replace a newer record)."""
    row = session.get(RemovalRow, (bucket, key))
    if row is None:
        session.add(RemovalRow(bucket=bucket, key=key, sequencer=sequencer, removed=datetime.now(UTC)))
        session.flush()
    elif sequencer_order(sequencer, row.sequencer) != -1:
        row.sequencer, row.removed = sequencer, datetime.now(UTC)


def mark_removed(session: Session, image_id: int) -> None:
    """A reserved version that was deleted before it could be published."""
    with translated("marking an image removed"):
        session.execute(update(ImageRow).where(ImageRow.id == image_id).values(status=REMOVED))


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
