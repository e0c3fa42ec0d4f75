"""The segment manifest: which segments each shard serves, and which ids are deleted.

Every write is a function of an *open* session and never commits, so a caller can put it inside a
larger transaction (the indexer publishes image rows and their segment rows together; the
compactor adds the merged segment and retires its inputs together). :func:`publish` is the
one-transaction convenience for callers that have nothing else to write.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.errors import Conflict
from mediasearch.metadata.db import translated, utc
from mediasearch.metadata.models import (
    DELETED,
    LIVE,
    RETIRED,
    GenerationRow,
    SegmentRow,
    TombstoneRow,
    utcnow,
)

if TYPE_CHECKING:  # the index package imports this module
    from mediasearch.vector_index.generation import GenerationRecord
    from mediasearch.vector_index.segment import SegmentMeta

NOTIFY_CHANNEL = "mediasearch_manifest"


@dataclass(frozen=True)
class SegmentRecord:
    """A manifest row as plain data (no session attached)."""

    segment_id: str
    shard: int
    uri: str
    count: int
    model_version: str
    index_type: str
    state: str = LIVE
    created: datetime | None = None
    retired: datetime | None = None
    generation: int = 0  # the index generation that placed its vectors (0: exact layout)

    @classmethod
    def from_meta(cls, meta: SegmentMeta, uri: str) -> SegmentRecord:
        return cls(
            meta.segment_id,
            meta.shard,
            uri,
            meta.count,
            meta.model_version,
            meta.index_type,
            generation=meta.generation,
        )

    @classmethod
    def from_row(cls, row: SegmentRow) -> SegmentRecord:
        return cls(
            row.id,
            row.shard,
            row.uri,
            row.count,
            row.model_version,
            row.index_type,
            row.state,
            utc(row.created),
            utc(row.retired) if row.retired is not None else None,
            row.generation,
        )


@dataclass(frozen=True)
class ShardManifest:
    """What one shard should serve right now."""

    shard: int
    segments: tuple[SegmentRecord, ...]
    tombstones: np.ndarray  # sorted unique int64 ids, shard-scoped and global together
    tombstone_mark: tuple[int, int]  # (max seq, count): cheap change detection
    generation: GenerationRecord | None = None  # the live index generation (None: exact layout)


def segment_row(
    rec: SegmentRecord, state: str, *, generation: int | None = None, retired: datetime | None = None
) -> SegmentRow:
    """The manifest row of a segment (``generation``: other than the one that wrote it)."""
    return SegmentRow(
        id=rec.segment_id, shard=rec.shard, uri=rec.uri, count=rec.count, model_version=rec.model_version,
        index_type=rec.index_type, state=state, created=utcnow(), retired=retired,
        generation=rec.generation if generation is None else generation,
    )  # fmt: skip


def publish_in(
    session: Session,
    add: Sequence[SegmentRecord] = (),
    retire: Sequence[str] = (),
    *,
    retired_at: datetime | None = None,
) -> None:
    """Add live segments and retire others inside the caller's transaction (``retired_at``: the
    time a generation switch stamps on its generation row too; a rollback finds them by it).

    Raises Conflict if a segment to retire is no longer live (another compactor got there first):
    the caller's whole transaction must then roll back, so no vector is ever served twice.
    """
    session.add_all(segment_row(rec, LIVE) for rec in add)
    if retire:
        result = session.execute(
            update(SegmentRow)
            .where(SegmentRow.id.in_(list(retire)), SegmentRow.state == LIVE)
            .values(state=RETIRED, retired=retired_at or utcnow())
        )
        if result.rowcount != len(set(retire)):  # type: ignore[attr-defined]
            raise Conflict(f"segments {sorted(retire)} are no longer all live")
    session.flush()
    _notify(session, sorted({str(rec.shard) for rec in add}))


def notify_all(session: Session) -> None:
    """Every shard re-reads its manifest (at commit)."""
    _notify(session, [""])


def _notify(session: Session, payloads: Iterable[str]) -> None:
    """On PostgreSQL, wake shard servers that LISTEN (delivered at commit, dropped on rollback).
    The payload is the shard number, or empty for "every shard"."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for payload in payloads:
        session.execute(text("SELECT pg_notify(:c, :p)"), {"c": NOTIFY_CHANNEL, "p": payload})


def publish(
    sessions: sessionmaker[Session], add: Sequence[SegmentRecord] = (), retire: Sequence[str] = ()
) -> None:
    """:func:`publish_in` as its own transaction."""
    with translated("publishing segments"), sessions.begin() as session:
        publish_in(session, add, retire)


def add_tombstones(session: Session, ids: Iterable[int], shard: int | None = None) -> None:
    """Mark ids deleted for one shard (or every shard when ``shard`` is None); no commit."""
    now = utcnow()
    session.add_all(TombstoneRow(shard=shard, image_id=int(i), created=now) for i in ids)
    session.flush()
    _notify(session, [str(shard) if shard is not None else ""])


def _tombstone_filter(shard: int):  # type: ignore[no-untyped-def]
    return or_(TombstoneRow.shard == shard, TombstoneRow.shard.is_(None))


def live_segments(session: Session, shard: int) -> tuple[SegmentRecord, ...]:
    rows = session.scalars(
        select(SegmentRow).where(SegmentRow.shard == shard, SegmentRow.state == LIVE).order_by(SegmentRow.id)
    )
    return tuple(SegmentRecord.from_row(r) for r in rows)


def load_shard_manifest(session: Session, shard: int, known: ShardManifest | None = None) -> ShardManifest:
    """Live segments + tombstones of a shard; tombstone ids are re-read only when they changed.

    On PostgreSQL the reads share one REPEATABLE READ snapshot when the session has not begun yet:
    a generation switch committing between two of them would otherwise pair the old segments
    with the new tombstones and quantizer."""
    with translated(f"reading the manifest of shard {shard}"):
        if session.get_bind().dialect.name == "postgresql" and not session.in_transaction():
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        segments = live_segments(session, shard)
        max_seq, count = session.execute(
            select(func.coalesce(func.max(TombstoneRow.seq), 0), func.count()).where(_tombstone_filter(shard))
        ).one()
        mark = (int(max_seq), int(count))
        if known is not None and known.tombstone_mark == mark:
            tombstones = known.tombstones
        else:
            ids = session.scalars(select(TombstoneRow.image_id).where(_tombstone_filter(shard))).all()
            tombstones = np.unique(np.asarray(ids, dtype=np.int64))
        generation = live_generation(session)
    return ShardManifest(shard, segments, tombstones, mark, generation)


# -- index generations ------------------------------------------------------------------------
def live_generation(session: Session, *, lock: bool = False) -> GenerationRecord | None:
    """The live index generation, or None while the index is in its exact layout (before the
    first generation, or a model generation no quantizer was trained for yet: ``nlist`` 0). With
    ``lock`` (PostgreSQL) the row is read FOR SHARE: a writer publishing segments placed by this
    generation holds it until commit, so a switch (FOR UPDATE) waits for it, and it for the switch."""
    query = select(GenerationRow).where(GenerationRow.state == LIVE, GenerationRow.nlist > 0)
    if lock:
        query = query.with_for_update(read=True)
    row = session.scalars(query).first()
    return _generation_record(row) if row is not None else None


def lock_generations(session: Session) -> None:
    """The first statement of a generation switch: wait for every writer that placed vectors (they
    read the live generation FOR SHARE, a ROW SHARE lock even when no generation exists yet) and
    keep new ones out until commit; plain reads go on. SQLite serialises writers anyway."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE index_generations IN EXCLUSIVE MODE"))


def next_generation_number(session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.max(GenerationRow.number), 0))) or 0) + 1


def switch_generation(session: Session, record: GenerationRecord, *, at: datetime | None = None) -> None:
    """Make ``record`` the live generation and retire the previous one, in the caller's transaction
    (which also swaps the segments, so no query ever mixes two generations' lists; ``at``: the
    time stamped on the segments it retires too)."""
    session.execute(
        update(GenerationRow).where(GenerationRow.state == LIVE).values(state=RETIRED, retired=at or utcnow())
    )
    session.add(
        GenerationRow(
            number=record.number,
            model_version=record.model_version,
            nlist=record.nlist,
            num_shards=record.num_shards,
            quantizer_id=record.quantizer_id,
            quantizer_uri=record.quantizer_uri,
            vectors=record.vectors,
            imbalance=record.imbalance,
            state=LIVE,
            created=utcnow(),
            dim=record.dim or None,
            model_name=record.model_name or None,
        )
    )
    session.flush()
    _notify(session, [""])


def list_generations(session: Session) -> list[GenerationRecord]:
    """Every index generation, newest first (deleted ones included: their rows stay as history)."""
    rows = session.scalars(select(GenerationRow).order_by(GenerationRow.number.desc()))
    return [_generation_record(r) for r in rows]


def exact_layout(session: Session) -> dict[str, int]:
    """Vectors served in the exact layout (live segments placed by no generation), by model version."""
    rows = session.execute(
        select(SegmentRow.model_version, func.sum(SegmentRow.count))
        .where(SegmentRow.state == LIVE, SegmentRow.generation == 0)
        .group_by(SegmentRow.model_version)
    )
    return {version: int(total or 0) for version, total in rows}


def retired_generations_before(session: Session, cutoff: datetime) -> list[GenerationRecord]:
    rows = session.scalars(select(GenerationRow).where(GenerationRow.state == RETIRED))
    return [_generation_record(r) for r in rows if r.retired is not None and utc(r.retired) < cutoff]


def mark_generations_deleted(session: Session, numbers: Sequence[int]) -> None:
    if numbers:
        session.execute(
            update(GenerationRow).where(GenerationRow.number.in_(list(numbers))).values(state=DELETED)
        )


def _generation_record(row: GenerationRow) -> GenerationRecord:
    from mediasearch.vector_index.generation import GenerationRecord

    return GenerationRecord(
        row.number,
        row.model_version,
        row.nlist,
        row.num_shards,
        row.quantizer_id,
        row.quantizer_uri,
        row.vectors,
        row.imbalance,
        row.state,
        row.dim or 0,
        utc(row.created) if row.created is not None else None,
        utc(row.retired) if row.retired is not None else None,
        row.model_name or "",
    )


def drop_applied_tombstones(session: Session, shard: int, upto_seq: int) -> int:
    """Delete a shard's own tombstones up to ``upto_seq`` once no live segment holds their ids."""
    result = session.execute(
        delete(TombstoneRow).where(TombstoneRow.shard == shard, TombstoneRow.seq <= upto_seq)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def known_segment_ids(session: Session) -> set[str]:
    """Ids of every segment (and generation quantizer) whose files must stay (live or retired, not
    yet deleted)."""
    segments = set(session.scalars(select(SegmentRow.id).where(SegmentRow.state != DELETED)))
    return segments | set(
        session.scalars(select(GenerationRow.quantizer_id).where(GenerationRow.state != DELETED))
    )


def retired_before(session: Session, cutoff: datetime) -> list[SegmentRecord]:
    rows = session.scalars(select(SegmentRow).where(SegmentRow.state == RETIRED))
    records = [SegmentRecord.from_row(r) for r in rows]
    return [r for r in records if r.retired is not None and r.retired < cutoff]


def mark_deleted(session: Session, segment_ids: Sequence[str]) -> None:
    if segment_ids:
        session.execute(update(SegmentRow).where(SegmentRow.id.in_(list(segment_ids))).values(state=DELETED))
