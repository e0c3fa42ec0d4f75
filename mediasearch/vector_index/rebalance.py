"""Build the next index generation from the stored vectors and switch to it in one transaction.

The first generation replaces the exact layout once the index holds ``index_generation_min``
vectors; later ones rebalance: when the largest shard outgrows the mean by
``index_rebalance_imbalance`` (lists grew unevenly), when the index holds
``index_rebalance_growth`` times the vectors its quantizer was trained on (nlist should grow with
sqrt(N)), or when the shard count changed. :meth:`Rebalancer.due` says which, and
``mediasearch compact`` checks it every round (``mediasearch compact --rebalance`` forces one).

The old generation serves until the switch:
1. snapshot the live segments and tombstones; load their source vectors (deleted ids dropped);
2. train the quantizer on a sample, place every vector in its nearest list, pack the lists into
   shards, write the generation's artifact and each shard's segments to the store (invisible:
   no manifest row names them);
3. in ONE transaction, holding the generations lock (indexer and compactor publishes wait, and
   restage for the new generation after it): place what was published since the snapshot, move
   tombstones written since onto the shards that now hold their ids, point each image row at its
   new shard, retire every old segment, add the new ones and make the generation live.
A crash before step 3 commits leaves orphans the garbage collector removes; queries never see a
mix of generations (a shard serves the view of one manifest read; a router that routes by the
previous generation for a moment is answered by shards that probe their own copy instead).
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.errors import Conflict, InvalidInput
from mediasearch.metadata.db import translated
from mediasearch.metadata.models import LIVE, ImageRow, SegmentRow, TombstoneRow, utcnow
from mediasearch.metadata.segment_manifest import (
    SegmentRecord,
    add_tombstones,
    live_generation,
    lock_generations,
    next_generation_number,
    publish_in,
    switch_generation,
)
from mediasearch.settings import Settings
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.generation import (
    Generation,
    GenerationRecord,
    imbalance,
    train_generation,
)
from mediasearch.vector_index.segment import load_vectors
from mediasearch.vector_index.store import SegmentStore
from mediasearch.vector_index.upgrade import live_model
from mediasearch.vector_index.writer import stage_segment

log = logging.getLogger(__name__)
DEFAULTS = Settings.defaults()
_ID_CHUNK = 5_000  # ids per UPDATE of image rows (SQLite binds at most 32,766 parameters)


@dataclass(frozen=True)
class RebalanceResult:
    generation: int
    reason: str
    vectors: int
    nlist: int
    imbalance: float
    segments: int
    retired: int
    seconds: float
    caught_up: int = 0  # vectors published while it built, placed inside the switch


@dataclass(frozen=True)
class _Snapshot:
    segments: tuple[SegmentRecord, ...]
    tombstone_seq: int
    model_version: str


class Rebalancer:
    """Builds generations for one manifest + store. Safe to kill at any point and run again."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: SegmentStore,
        config: BuildConfig,
        num_shards: int,
        *,
        min_vectors: int = DEFAULTS.index_generation_min,
        max_imbalance: float = DEFAULTS.index_rebalance_imbalance,
        growth: float = DEFAULTS.index_rebalance_growth,
        max_segment: int = DEFAULTS.compact_max_vectors,
        work_dir: Path | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.config = config
        self.num_shards = num_shards
        self.min_vectors = min_vectors
        self.max_imbalance = max_imbalance
        self.growth = growth
        self.max_segment = max_segment
        self.work_dir = work_dir

    @classmethod
    def from_settings(
        cls, settings: Settings, sessions: sessionmaker[Session], store: SegmentStore
    ) -> Rebalancer:
        return cls(
            sessions,
            store,
            BuildConfig.from_settings(settings),
            settings.num_shards,
            min_vectors=settings.index_generation_min,
            max_imbalance=settings.index_rebalance_imbalance,
            growth=settings.index_rebalance_growth,
            max_segment=settings.compact_max_vectors,
        )

    def due(self) -> str | None:
        """Why a new generation should be built now, or None."""
        with translated("reading the index size"), self.sessions() as session:
            current = live_generation(session)
            rows = session.execute(
                select(SegmentRow.shard, func.sum(SegmentRow.count))
                .where(SegmentRow.state == LIVE)
                .group_by(SegmentRow.shard)
            ).all()
        per_shard = np.zeros(self.num_shards, dtype=np.int64)
        for shard, count in rows:
            if 0 <= shard < self.num_shards:
                per_shard[shard] += int(count or 0)
        total = int(per_shard.sum())
        if current is None:
            return f"first generation: {total} vectors" if total >= self.min_vectors else None
        if current.num_shards != self.num_shards:
            return f"shard count changed: {current.num_shards} -> {self.num_shards}"
        if total >= self.growth * current.vectors:
            return (
                f"grown {total / max(current.vectors, 1):.1f}x since generation {current.number} was trained"
            )
        ratio = imbalance(per_shard)
        if self.num_shards > 1 and ratio > self.max_imbalance:
            return f"imbalance {ratio:.2f} > {self.max_imbalance}"
        return None

    def run(self, reason: str = "requested", *, say: Callable[[str], None] = log.info) -> RebalanceResult:
        """Build the next generation from everything live and switch to it (see the module doc)."""
        started = time.perf_counter()
        snapshot = self._snapshot()
        if not snapshot.segments:
            raise InvalidInput("the index is empty: nothing to train a generation on")
        ids, vectors = self._load(snapshot.segments, self._tombstones(upto=snapshot.tombstone_seq))
        say(f"rebalance: {len(ids)} vectors from {len(snapshot.segments)} segments ({reason})")
        with self.sessions() as session:
            number = next_generation_number(session)
        generation, lists = train_generation(
            vectors, number=number, num_shards=self.num_shards, config=self.config
        )
        elapsed = time.perf_counter() - started
        say(f"rebalance: trained generation {number}: {generation.nlist} lists, {elapsed:.0f}s")
        record = self._store_generation(generation, snapshot.model_version, len(ids))
        owners = generation.owners[lists]
        staged = self._stage(generation, ids, vectors, lists, snapshot.model_version)
        say(f"rebalance: staged {len(staged)} segments, {time.perf_counter() - started:.0f}s")
        caught_up = self._switch(generation, record, snapshot, ids, owners, staged)
        per_shard = np.bincount(owners, minlength=self.num_shards)
        result = RebalanceResult(
            number, reason, len(ids) + caught_up, generation.nlist, imbalance(per_shard),
            len(staged), len(snapshot.segments), time.perf_counter() - started, caught_up,
        )  # fmt: skip
        say(
            f"rebalance: generation {number} live: {result.vectors} vectors, {result.nlist} lists, "
            f"imbalance {result.imbalance:.3f}, {result.seconds:.0f}s"
        )
        return result

    # -- steps -------------------------------------------------------------------------------
    def _snapshot(self) -> _Snapshot:
        with translated("reading the manifest"), self.sessions() as session:
            rows = session.scalars(select(SegmentRow).where(SegmentRow.state == LIVE).order_by(SegmentRow.id))
            segments = tuple(SegmentRecord.from_row(r) for r in rows)
            seq = int(session.scalar(select(func.coalesce(func.max(TombstoneRow.seq), 0))) or 0)
        versions = {s.model_version for s in segments}
        if len(versions) > 1:
            raise InvalidInput(f"live segments of several model versions {sorted(versions)}: reindex first")
        return _Snapshot(segments, seq, versions.pop() if versions else "")

    def _tombstones(self, upto: int) -> dict[int | None, np.ndarray]:
        with translated("reading tombstones"), self.sessions() as session:
            return _tombstone_ids(session, upto=upto)

    def _load(
        self, segments: tuple[SegmentRecord, ...], tombstones: dict[int | None, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        everywhere = tombstones.get(None, np.empty(0, dtype=np.int64))
        id_parts, vector_parts = [], []
        for record in segments:
            folder = self.store.open(record.uri)
            try:
                ids, vectors = load_vectors(folder)
                dead = np.union1d(everywhere, tombstones.get(record.shard, np.empty(0, dtype=np.int64)))
                keep = ~np.isin(ids, dead)
                id_parts.append(ids[keep])
                vector_parts.append(vectors[keep])
            finally:
                self.store.release(record.uri, folder)
        if not id_parts:
            return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
        ids, vectors = np.concatenate(id_parts), np.concatenate(vector_parts)
        ids, first = np.unique(ids, return_index=True)  # an id twice (never expected): keep one copy
        return ids, vectors[first]

    def _store_generation(self, generation: Generation, model_version: str, count: int) -> GenerationRecord:
        segment_id = f"g{generation.number:06d}-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(dir=self.work_dir, prefix="generation-") as tmp:
            folder = Path(tmp) / "quantizer"
            meta = generation.write(folder, model_version=model_version, segment_id=segment_id)
            uri = self.store.put(folder, meta)
        return GenerationRecord(
            generation.number, model_version, generation.nlist, self.num_shards, segment_id, uri, count,
            imbalance(generation.shard_sizes()), dim=generation.dim,
        )  # fmt: skip

    def _stage(
        self,
        generation: Generation,
        ids: np.ndarray,
        vectors: np.ndarray,
        lists: np.ndarray,
        model_version: str,
    ) -> list[SegmentRecord]:
        """Each shard's vectors as segments of at most ``max_segment`` vectors."""
        owners = generation.owners[lists]
        out = []
        for shard in range(self.num_shards):
            mine = np.flatnonzero(owners == shard)
            for start in range(0, len(mine), self.max_segment):
                part = mine[start : start + self.max_segment]
                record = stage_segment(
                    self.store,
                    vectors[part],
                    ids[part],
                    shard=shard,
                    model_version=model_version,
                    config=self.config,
                    work_dir=self.work_dir,
                    generation=generation,
                    lists=lists[part],
                )
                out.append(record)
        return out

    def _switch(
        self,
        generation: Generation,
        record: GenerationRecord,
        snapshot: _Snapshot,
        ids: np.ndarray,
        owners: np.ndarray,
        staged: list[SegmentRecord],
    ) -> int:
        """Step 3; returns how many vectors published since the snapshot it placed."""
        with translated("switching index generations"), self.sessions.begin() as session:
            lock_generations(session)
            rows = session.scalars(select(SegmentRow).where(SegmentRow.state == LIVE))
            live = [SegmentRecord.from_row(r) for r in rows]
            known = {s.segment_id for s in snapshot.segments}
            newer = tuple(s for s in live if s.segment_id not in known)
            tomb_seq = int(session.scalar(select(func.coalesce(func.max(TombstoneRow.seq), 0))) or 0)
            # deletes since the snapshot, and what was published since (its deletes applied)
            recent = _tombstone_ids(session, after=snapshot.tombstone_seq)
            extra_ids, extra_vectors = self._load(newer, _tombstone_ids(session))
            fresh = ~np.isin(extra_ids, ids)  # a compactor's merge of snapshot segments: placed already
            extra_ids, extra_vectors = extra_ids[fresh], extra_vectors[fresh]
            if len(extra_ids):
                if {s.model_version for s in newer} - {snapshot.model_version}:
                    raise Conflict("segments of another model version were published while rebalancing")
                extra_lists = generation.assign(extra_vectors)
                staged = staged + self._stage(
                    generation, extra_ids, extra_vectors, extra_lists, snapshot.model_version
                )
                ids = np.concatenate([ids, extra_ids])
                owners = np.concatenate([owners, generation.owners[extra_lists]])
            order = np.argsort(ids)
            ids, owners = ids[order], owners[order]
            # every shard-scoped tombstone so far is applied (its segment is retired now) or moved
            session.execute(
                delete(TombstoneRow).where(TombstoneRow.shard.is_not(None), TombstoneRow.seq <= tomb_seq)
            )
            deleted_since = np.unique(
                np.concatenate([v for k, v in recent.items() if k is not None] or [np.empty(0, np.int64)])
            )
            moved = deleted_since[np.isin(deleted_since, ids)]
            for shard in range(self.num_shards):
                mine = moved[owners[np.searchsorted(ids, moved)] == shard]
                if len(mine):
                    add_tombstones(session, mine.tolist(), shard=shard)
                self._rehome_images(session, ids[owners == shard], shard)
            now = utcnow()  # one time on the retired segments and generation: a rollback finds them by it
            publish_in(session, add=staged, retire=[s.segment_id for s in live], retired_at=now)
            serving = live_model(session)  # a reindexed model keeps its name in the repository
            if serving is not None and serving[1] == record.model_version:
                record = replace(record, model_name=serving[2])
            switch_generation(session, record, at=now)
        return len(extra_ids)

    @staticmethod
    def _rehome_images(session: Session, ids: np.ndarray, shard: int) -> None:
        """Point image rows at the shard that now holds their vectors (deletes tombstone there)."""
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK].tolist()
            session.execute(
                update(ImageRow).where(ImageRow.id.in_(chunk), ImageRow.shard != shard).values(shard=shard)
            )


def _tombstone_ids(
    session: Session, *, after: int = 0, upto: int | None = None
) -> dict[int | None, np.ndarray]:
    """Deleted ids per shard (None: every shard) with after < seq <= upto."""
    query = select(TombstoneRow.shard, TombstoneRow.image_id).where(TombstoneRow.seq > after)
    if upto is not None:
        query = query.where(TombstoneRow.seq <= upto)
    out: dict[int | None, list[int]] = {}
    for shard, image_id in session.execute(query).all():
        out.setdefault(shard, []).append(int(image_id))
    return {shard: np.unique(np.asarray(v, dtype=np.int64)) for shard, v in out.items()}
