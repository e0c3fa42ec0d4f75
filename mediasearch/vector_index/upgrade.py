"""Model generations: the switch to a generation a reindex built, and the rollback from it.

A reindex (:mod:`mediasearch.indexer.reindex`) fills a generation in state ``building`` with
*staged* segments: recorded in the manifest, never served. :func:`switch_to` makes it live in ONE
transaction, under the generations lock (indexer publishes wait for it):

- the completeness check: every INDEXED image has exactly one vector in the generation, or the
  switch is refused with the ids that are missing (or doubled);
- the segments served until now are retired (kept: the rollback needs them), the staged ones go
  live; vectors of images removed since they were staged are tombstoned;
- ``images.shard`` and ``images.model_version`` follow the new placement and model;
- the generation served until now is retired, this one is live; every shard is notified.

A model generation holds its vectors in the exact layout (segments placed by the hash of the id,
every shard asked); the compactor's rebalance trains a quantizer for it when one is due, as for
any index. Before the first switch the index has no generation row for its exact layout: the
switch records one, number 0, so the rollback has something to return to.

:func:`rollback` returns to the generation retired by the last switch while its files are kept
(``MEDIASEARCH_GENERATION_KEEP_S``; garbage collection leaves them alone until then), in one
transaction: the same steps the other way. Images indexed after the switch exist only in the
newer generation: the rollback refuses while any is missing unless told to go on without them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.errors import Conflict, NotFound
from mediasearch.metadata.db import translated, utc
from mediasearch.metadata.models import (
    DELETED,
    INDEXED,
    LIVE,
    RETIRED,
    GenerationRow,
    ImageRow,
    SegmentRow,
    utcnow,
)
from mediasearch.metadata.segment_manifest import (
    SegmentRecord,
    add_tombstones,
    lock_generations,
    notify_all,
    segment_row,
)
from mediasearch.settings import Settings
from mediasearch.vector_index.segment import IDS_FILE
from mediasearch.vector_index.store import SegmentStore

log = logging.getLogger(__name__)

BUILDING = "building"  # a generation's state while a reindex fills it
STAGED = "staged"  # a segment's state: recorded, kept, never served
_SHOWN = 20


@dataclass
class Completeness:
    """What a generation holds against what is indexed."""

    indexed: int
    held: int
    missing: list[int] = field(default_factory=list)  # indexed, with no vector in the generation
    doubled: list[int] = field(default_factory=list)  # more than one vector
    gone: int = 0  # vectors of images no longer indexed (removed meanwhile)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.doubled

    def refusal(self, what: str) -> str:
        parts = []
        if self.missing:
            more = f" and {len(self.missing) - _SHOWN} more" if len(self.missing) > _SHOWN else ""
            parts.append(f"{len(self.missing)} indexed images have no vector in it (ids "
                         f"{', '.join(map(str, self.missing[:_SHOWN]))}{more})")  # fmt: skip
        if self.doubled:
            parts.append(
                f"{len(self.doubled)} ids have two vectors ({', '.join(map(str, self.doubled[:_SHOWN]))})"
            )
        return f"{what}: " + "; ".join(parts)


@dataclass(frozen=True)
class SwitchResult:
    number: int
    model_version: str
    previous: int
    vectors: int
    tombstoned: int
    missing: int = 0  # rollback only: images indexed since the switch, left without a vector


def _segment_ids(store: SegmentStore, rows: list[SegmentRow]) -> list[tuple[int, np.ndarray]]:
    return [(r.shard, np.load(store.open(r.uri, verify_checksums=False) / IDS_FILE)) for r in rows]


def _completeness(session: Session, held: list[tuple[int, np.ndarray]]) -> Completeness:
    ids = np.concatenate([i for _, i in held]) if held else np.zeros(0, np.int64)
    counts = Counter(ids.tolist())
    indexed = set(session.scalars(select(ImageRow.id).where(ImageRow.status == INDEXED)))
    return Completeness(
        indexed=len(indexed),
        held=len(counts),
        missing=sorted(indexed - counts.keys()),
        doubled=sorted(i for i, n in counts.items() if n > 1),
        gone=len(counts.keys() - indexed),
    )


def add_staged(session: Session, records: Sequence[SegmentRecord], number: int) -> bool:
    """Record ``records`` as staged segments of building generation ``number``, in the caller's
    transaction; False (nothing recorded: the files become orphans) when it is no longer building."""
    row = session.get(GenerationRow, number)
    if row is None or row.state != BUILDING:
        return False
    session.add_all(segment_row(rec, STAGED, generation=number) for rec in records)
    session.flush()
    return True


def add_kept(session: Session, records: Sequence[SegmentRecord], number: int) -> bool:
    """Record ``records`` in generation ``number`` while it is the one a rollback returns to
    (dual write after a switch): retired with the same time as the rest of it, so the rollback
    restores them with it and garbage collection keeps them as long. False when it is not that."""
    row = session.get(GenerationRow, number)
    if row is None or row.state != RETIRED or row.retired is None or row.nlist:
        return False
    session.add_all(segment_row(rec, RETIRED, generation=0, retired=row.retired) for rec in records)
    session.flush()
    return True


def building(session: Session) -> GenerationRow | None:
    """The generation a reindex is building, if any (at most one: a second model is refused)."""
    return session.scalars(select(GenerationRow).where(GenerationRow.state == BUILDING)).first()


def staged_segments(session: Session, number: int) -> list[SegmentRow]:
    return list(
        session.scalars(select(SegmentRow).where(SegmentRow.generation == number, SegmentRow.state == STAGED))
    )


def staged_ids(session: Session, store: SegmentStore, number: int) -> np.ndarray:
    """Every id the generation's staged segments hold (an id twice if it was staged twice)."""
    held = _segment_ids(store, staged_segments(session, number))
    return np.concatenate([ids for _, ids in held]) if held else np.zeros(0, np.int64)


def check_completeness(session: Session, store: SegmentStore, number: int) -> Completeness:
    """The completeness of the generation a reindex is building (its staged segments)."""
    return _completeness(session, _segment_ids(store, staged_segments(session, number)))


def _follow(session: Session, held: list[tuple[int, np.ndarray]], model_version: str) -> int:
    """Point the images rows at the segments that now hold them; tombstone what they hold of
    images no longer indexed. Returns how many were tombstoned."""
    indexed = set(session.scalars(select(ImageRow.id).where(ImageRow.status == INDEXED)))
    tombstoned = 0
    for shard, ids in held:
        mine = [int(i) for i in ids.tolist() if int(i) in indexed]
        dead = [int(i) for i in ids.tolist() if int(i) not in indexed]
        for start in range(0, len(mine), 1000):
            session.execute(
                update(ImageRow)
                .where(ImageRow.id.in_(mine[start : start + 1000]))
                .values(shard=shard, model_version=model_version)
            )
        if dead:
            add_tombstones(session, dead, shard)
            tombstoned += len(dead)
    return tombstoned


def _retire_live(session: Session, now: datetime, num_shards: int) -> int:
    """Retire the live generation and its segments at ``now``; its number (0: the exact layout
    before any generation, recorded here as generation 0)."""
    current = session.scalars(select(GenerationRow).where(GenerationRow.state == LIVE)).first()
    live = list(session.scalars(select(SegmentRow).where(SegmentRow.state == LIVE)))
    if current is None:
        current = session.get(GenerationRow, 0)
        if current is None:
            models = Counter(s.model_version for s in live)
            current = GenerationRow(
                number=0, model_version=models.most_common(1)[0][0] if models else "", nlist=0,
                num_shards=num_shards, quantizer_id="", quantizer_uri="", vectors=sum(s.count for s in live),
                imbalance=1.0, state=RETIRED, created=now,
            )  # fmt: skip
            session.add(current)
    current.state, current.retired = RETIRED, now
    for segment in live:
        segment.state, segment.retired = RETIRED, now
    session.flush()
    return current.number


def switch_to(session: Session, store: SegmentStore, number: int, num_shards: int) -> SwitchResult:
    """Make building generation ``number`` live, in the caller's transaction (see the module doc)."""
    lock_generations(session)
    row = session.get(GenerationRow, number)
    if row is None:
        raise NotFound(f"no generation {number} (mediasearch generation list)")
    if row.state != BUILDING:
        raise Conflict(
            f"generation {number} is {row.state}, not building: only a reindexed generation switches"
        )
    staged = staged_segments(session, number)
    held = _segment_ids(store, staged)
    done = _completeness(session, held)
    if not done.complete:
        raise Conflict(done.refusal(f"generation {number} is not complete; run the reindex again"))
    now = utcnow()
    previous = _retire_live(session, now, num_shards)
    for segment in staged:  # the exact layout: placed by no quantizer (the compactor merges them as such)
        segment.state, segment.generation = LIVE, 0
    tombstoned = _follow(session, held, row.model_version)
    row.state, row.vectors, row.num_shards = LIVE, done.held, num_shards
    session.flush()
    notify_all(session)
    log.info("generation %d (model %s) is live; %d was retired", number, row.model_version, previous)
    return SwitchResult(number, row.model_version, previous, done.held - done.gone, tombstoned)


def kept_generation(session: Session, keep_s: float) -> GenerationRow | None:
    """The generation the last switch retired, while its files are kept for a rollback: only when
    that switch changed the model (a rebalance's previous generation, same model, is not kept)."""
    row = session.scalars(
        select(GenerationRow).where(GenerationRow.state == RETIRED).order_by(GenerationRow.retired.desc())
    ).first()
    if row is None or row.retired is None or utc(row.retired) < utcnow() - timedelta(seconds=keep_s):
        return None
    live = live_model(session)
    return row if live is not None and live[1] != row.model_version else None


def kept_since(session: Session, keep_s: float) -> tuple[int, datetime] | None:
    """(generation, retired time) of what garbage collection must keep for a rollback: that
    generation's quantizer and the segments retired at that time."""
    row = kept_generation(session, keep_s)
    return (row.number, utc(row.retired)) if row is not None and row.retired is not None else None


def rollback(
    session: Session, store: SegmentStore, keep_s: float, num_shards: int, *, accept_missing: bool = False
) -> SwitchResult:
    """Return to the generation the last switch retired, in the caller's transaction."""
    lock_generations(session)
    current = session.scalars(select(GenerationRow).where(GenerationRow.state == LIVE)).first()
    target = kept_generation(session, keep_s)
    if current is None or target is None or target.retired is None or target.number >= current.number:
        raise Conflict(
            "no generation to roll back to: the last switch retired none (or this is a rollback already), "
            "or its files are no longer kept (MEDIASEARCH_GENERATION_KEEP_S)"
        )
    # the segments the same transaction retired (a switch stamps both with one time)
    segments = list(
        session.scalars(
            select(SegmentRow).where(SegmentRow.state == RETIRED, SegmentRow.retired == target.retired)
        )
    )
    held = _segment_ids(store, segments)
    done = _completeness(session, held)
    if done.doubled or (done.missing and not accept_missing):
        raise Conflict(
            done.refusal(f"generation {target.number} lacks images indexed since the switch")
            + " (roll back anyway, without them: --accept-missing; or reindex them with its model first)"
        )
    now = utcnow()
    current.state, current.retired = RETIRED, now
    for segment in session.scalars(select(SegmentRow).where(SegmentRow.state == LIVE)):
        segment.state, segment.retired = RETIRED, now
    for segment in segments:
        segment.state, segment.retired = LIVE, None
    target.state, target.retired = LIVE, None
    session.flush()
    tombstoned = _follow(session, held, target.model_version)
    session.flush()
    notify_all(session)
    log.info("rolled back to generation %d (model %s)", target.number, target.model_version)
    vectors = done.held - done.gone
    return SwitchResult(
        target.number, target.model_version, current.number, vectors, tombstoned, len(done.missing)
    )


def live_model(session: Session) -> tuple[int, str, str] | None:
    """(number, model version, model name) of the live generation row, exact layouts included."""
    row = session.scalars(select(GenerationRow).where(GenerationRow.state == LIVE)).first()
    return (row.number, row.model_version, row.model_name or "") if row is not None else None


def abandon(session: Session, number: int) -> int:
    """Give up the generation a reindex is building: its staged segments are retired (garbage
    collection deletes their files after the grace period), the row stays as history (deleted).
    Returns how many vectors it held. Another model may then be reindexed."""
    lock_generations(session)
    row = session.get(GenerationRow, number)
    if row is None or row.state != BUILDING:
        raise Conflict(f"generation {number} is not being built (mediasearch generation list)")
    now, held = utcnow(), 0
    for segment in staged_segments(session, number):
        segment.state, segment.retired = RETIRED, now
        held += segment.count
    row.state, row.retired = DELETED, now
    session.flush()
    return held


def reindex_progress(session: Session) -> tuple[int, str, int] | None:
    """(number, model version, vectors staged so far) of the generation being built, if any."""
    row = building(session)
    if row is None:
        return None
    staged = session.scalar(
        select(func.sum(SegmentRow.count)).where(
            SegmentRow.generation == row.number, SegmentRow.state == STAGED
        )
    )
    return row.number, row.model_version, int(staged or 0)


def live_model_settings(settings: Settings, sessions: sessionmaker[Session]) -> Settings:
    """``settings`` with the model of the live generation: a reindexed one names its model in the
    repository (``model_name``); otherwise the deployment's own (``MEDIASEARCH_MODEL_NAME``). What
    gateways and indexers encode with, so a restart after a switch (or a rollback) follows it."""
    with sessions() as session, translated("reading the live generation's model"):
        live = live_model(session)
    if live is None:
        return settings
    return settings.with_overrides(model_name=live[2] or settings.model_name)
