"""Write stage: reserve ids, write one segment per shard, then ONE transaction publishes it all.

The order is what makes a crash at any point harmless (exactly-once in effect):

1. **reserve** (its own short transaction): each object version gets its images row, PENDING,
   keyed by the unique (bucket, key, etag), with the tags read with the object. Its id is the
   vector's label. A version already INDEXED, FAILED or REMOVED is a duplicate delivery: nothing
   more to do. A PENDING row left by a run that died is reused (its id was never served).
2. **stage**: group the vectors by shard and upload one immutable segment per shard. Under a live
   index generation a vector's shard is the owner of its nearest list (the segment holds it in
   that list); before the first one, the partitioner's (hash of the id). Nothing serves a segment
   before its manifest row exists; a crash here leaves orphan files that the compactor's garbage
   collection deletes.
3. **publish** (ONE transaction): check the live generation is still the one the segments were
   placed by (read FOR SHARE: a generation switch waits for this transaction; after a switch the
   batch is restaged), lock the reserved rows and check they are still PENDING (another
   indexer that got the same message may have won: its rows are dropped from this batch and the
   segments restaged without them), mark them INDEXED (or FAILED with the reason) and write the
   thumbnails of the INDEXED ones, add the segment manifest rows, mark older versions of the same
   keys and removed objects REMOVED, tombstone their vectors and delete their thumbnails. Shards
   see the new vectors and the deletes in the same manifest change; the thumbnails table holds
   the live images only.
   Versions and removals of one key are ordered here, under a per-key lock, by their S3
   sequencers (or, where those cannot tell, by what the bucket holds): a version deleted after
   it was fetched is published REMOVED and tombstoned, never served (see
   :mod:`mediasearch.metadata.images_repo`).
4. only then does the runner acknowledge the deliveries.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.errors import Conflict, ModelChanged
from mediasearch.indexer.events import ObjectEvent
from mediasearch.indexer.items import Item
from mediasearch.metadata.db import translated
from mediasearch.metadata.images_repo import (
    Current,
    NewImage,
    Unindexed,
    delete_thumbnails,
    lock_keys,
    lock_pending,
    mark_failed,
    mark_indexed,
    mark_removed,
    put_thumbnails,
    remove_object,
    removed_since,
    reserve,
    supersede,
    version_of,
)
from mediasearch.metadata.models import PENDING, REMOVED
from mediasearch.metadata.segment_manifest import SegmentRecord, add_tombstones, live_generation, publish_in
from mediasearch.objects import ObjectReader, sequencer_order
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.generation import Generation, load_generation
from mediasearch.vector_index.partition import Partitioner
from mediasearch.vector_index.store import SegmentStore
from mediasearch.vector_index.upgrade import add_kept, add_staged, live_model
from mediasearch.vector_index.writer import stage_segment

log = logging.getLogger(__name__)
stages = logging.getLogger(f"{__package__}.stages")  # a line per batch step; quiet under a progress bar


class _Raced(Exception):
    def __init__(self, ids: set[int]) -> None:
        super().__init__(f"{len(ids)} images were published by another indexer")
        self.ids = ids


class _Regenerated(Exception):
    def __init__(self, staged: int, live: int) -> None:
        super().__init__(f"index generation {live} went live while this batch was placed by {staged}")


class Committer:
    """Records a batch of items; sets each item's ``outcome``. Synchronous: run it in a thread."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: SegmentStore,
        partitioner: Partitioner,
        config: BuildConfig,
        model_version: str,
        *,
        objects: ObjectReader | None = None,
        work_dir: Path | None = None,
    ) -> None:
        self.sessions = sessions
        self.objects = objects  # asked which version a key holds when events cannot be ordered
        self.store = store
        self.partitioner = partitioner
        self.config = config
        self.model_version = model_version
        self.work_dir = work_dir
        self._generation: Generation | None = None  # the last one loaded (reused while it is live)

    def already_done(self, bucket: str, key: str, etag: str, sequencer: str | None = None) -> bool:
        """True when this version is recorded for good (a duplicate delivery; skip its work). A
        version recorded only as removed is done unless this event may be a new upload of the same
        bytes (its sequencer is not older): then fetching it (If-Match) asks the bucket."""
        with self.sessions() as session:
            status, seen = version_of(session, bucket, key, etag)
        if status is None or status == PENDING:
            return False
        if status == REMOVED:
            return sequencer_order(sequencer, seen) == -1
        return True

    def commit(self, items: Sequence[Item]) -> None:
        created = [it for it in items if it.outcome is None and it.event.kind == "created"]
        removed = [it for it in items if it.outcome is None and it.event.kind == "removed"]
        if not created and not removed:
            return
        self.publish(self.reserve(created), removed)

    def publish(self, live: list[Item], removed: list[Item]) -> None:
        """Steps 2-3 for reserved items (see :meth:`reserve`) and removal events."""
        while True:
            records = self._stage(live)
            try:
                stale = self._publish(live, removed, records)
                break
            except _Raced as raced:
                log.info("indexer: %s; restaging without them", raced)
                for it in live:
                    if it.image_id in raced.ids:
                        it.outcome = "duplicate"
                live = [it for it in live if it.outcome is None]
            except _Regenerated as switched:
                log.info("indexer: %s; restaging", switched)
        for it in live:
            if it.image_id in stale:
                it.outcome = "stale"
            else:
                it.outcome = "indexed" if it.vector is not None else "failed"
        for it in removed:
            it.outcome = "removed"
        _stage("committed", len(live) - len(stale), len(removed))

    # -- 1. reserve -------------------------------------------------------------------------
    def reserve(self, created: list[Item]) -> list[Item]:
        """Step 1: give each created item its row id; returns the items still to publish."""
        if not created:
            return []
        images = [_new_image(it) for it in created]
        for attempt in range(5):
            try:
                with translated("reserving image ids"), self.sessions.begin() as session:
                    reservations = reserve(session, images)
                break
            except Conflict:  # another indexer inserted one of these versions first: read it
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        first: set[int] = set()
        for it, res in zip(created, reservations, strict=True):
            if res.status != PENDING or res.image_id in first:
                it.outcome = "duplicate"
                continue
            first.add(res.image_id)
            it.image_id = res.image_id
        _stage("reserved", len(first), 0)
        return [it for it in created if it.outcome is None]

    # -- 2. stage ---------------------------------------------------------------------------
    def _stage(self, live: list[Item]) -> Staged:
        generation = self._live_generation()
        number = generation.number if generation is not None else 0
        encoded = [it for it in live if it.vector is not None]
        shadow = self._stage_shadow(live)
        if not encoded:
            return Staged(number, [], shadow)
        ids = np.array([it.image_id for it in encoded], dtype=np.int64)
        vectors = np.stack([it.vector for it in encoded if it.vector is not None]).astype(np.float32)
        lists = None
        if generation is not None:
            lists = generation.assign(vectors)
            shards = generation.owners[lists]
        else:
            stamps = np.array([_created(it).timestamp() for it in encoded], dtype=np.float64)
            shards = self.partitioner.shards_for(ids, stamps)
        out = []
        for shard in sorted(set(shards.tolist())):
            mask = shards == shard
            record = stage_segment(
                self.store,
                vectors[mask],
                ids[mask],
                shard=int(shard),
                model_version=self.model_version,
                config=self.config,
                work_dir=self.work_dir,
                generation=generation,
                lists=lists[mask] if lists is not None else None,
            )
            out.append((record, [it for it, m in zip(encoded, mask, strict=True) if m]))
        _stage("staged", len(encoded), len(out))
        return Staged(number, out, shadow)

    def _stage_shadow(self, live: list[Item]) -> tuple[int, list[SegmentRecord], bool] | None:
        """Dual write: the vectors of the generation being built, one segment per shard."""
        written = [it for it in live if it.shadow is not None and it.vector is not None]
        if not written:
            return None
        number, version, _ = written[0].shadow  # type: ignore[misc]
        written = [it for it in written if it.shadow is not None and it.shadow[0] == number]
        ids = np.array([it.image_id for it in written], dtype=np.int64)
        vectors = np.stack([it.shadow[2] for it in written if it.shadow is not None]).astype(np.float32)
        stamps = np.array([_created(it).timestamp() for it in written])
        return number, self.stage_flat(ids, vectors, version, stamps), written[0].shadow_kept

    def stage_flat(
        self, ids: np.ndarray, vectors: np.ndarray, version: str, stamps: np.ndarray | None = None
    ) -> list[SegmentRecord]:
        """One exact-layout segment per shard (the partitioner's), uploaded; nothing recorded."""
        shards = self.partitioner.shards_for(ids, stamps)
        return [
            stage_segment(
                self.store, vectors[shards == shard], ids[shards == shard], shard=int(shard),
                model_version=version, config=self.config, work_dir=self.work_dir,
            )
            for shard in sorted(set(shards.tolist()))
        ]  # fmt: skip

    def _live_generation(self) -> Generation | None:
        """The live index generation, its quantizer loaded once and reused while it stays live."""
        with translated("reading the live index generation"), self.sessions() as session:
            record = live_generation(session)
        if record is None:
            return None
        if self._generation is None or self._generation.number != record.number:
            self._generation = load_generation(self.store, record)
        return self._generation

    # -- 3. publish -------------------------------------------------------------------------
    def _publish(self, live: list[Item], removed: list[Item], staged: Staged) -> set[int]:
        """Step 3; returns the ids of the versions found deleted since they were fetched."""
        now = datetime.now(UTC)
        records = staged.records
        shard_of = {it.image_id: record.shard for record, members in records for it in members}
        with translated("publishing an indexer batch"), self.sessions.begin() as session:
            current = live_generation(session, lock=True)
            if (current.number if current is not None else 0) != staged.generation:
                raise _Regenerated(staged.generation, current.number if current is not None else 0)
            serving = live_model(session)
            if live and serving is not None and serving[1] != self.model_version:
                raise ModelChanged(
                    f"the index now serves model {serving[1]} (generation {serving[0]}); this indexer "
                    f"encodes with {self.model_version}: restart it (it takes the live generation's model)"
                )
            lock_keys(session, [(it.event.bucket, it.event.key) for it in (*live, *removed)])
            raced = lock_pending(session, [it.image_id for it in live if it.image_id is not None])
            if raced:
                raise _Raced(raced)
            gone: list[Unindexed] = []
            stale: set[int] = set()
            for it in live:  # deleted between fetch and now: published only to be tombstoned
                assert it.image_id is not None and it.fetched is not None
                ev = it.event
                if removed_since(
                    session, ev.bucket, ev.key, it.fetched.etag, ev.sequencer, self._current(ev)
                ):
                    stale.add(it.image_id)
                    mark_removed(session, it.image_id)
                    gone.append(Unindexed(it.image_id, shard_of.get(it.image_id), it.image_id in shard_of))
            rows = [
                (it.image_id, record.shard, it.width or 0, it.height or 0)
                for record, members in records
                for it in members
                if it.image_id is not None and it.image_id not in stale
            ]
            mark_indexed(session, rows, model_version=self.model_version, when=now)
            put_thumbnails(session, _thumbnails(records, stale))
            for it in live:
                if it.vector is None and it.image_id is not None and it.image_id not in stale:
                    mark_failed(session, it.image_id, it.error or "unknown error")
            publish_in(session, add=[record for record, _ in records])
            if staged.shadow is not None:
                number, shadow_records, kept = staged.shadow
                if not (add_kept if kept else add_staged)(session, shadow_records, number):
                    log.info("indexer: generation %d takes no new images now: their vectors dropped", number)
            for bucket, key in sorted(
                {(it.event.bucket, it.event.key) for it in live if it.image_id not in stale}
            ):
                gone.extend(supersede(session, bucket, key, self._current_of(bucket, key)))
            for it in removed:
                ev = it.event
                gone.extend(remove_object(session, ev.bucket, ev.key, ev.sequencer, self._current(ev)))
            by_shard: dict[int | None, list[int]] = defaultdict(list)
            for g in gone:
                if g.had_vector:
                    by_shard[g.shard].append(g.image_id)
            for shard, ids in by_shard.items():
                add_tombstones(session, ids, shard=shard)
            delete_thumbnails(session, [g.image_id for g in gone])
        return stale

    def _current(self, ev: ObjectEvent) -> Current | None:
        return self._current_of(ev.bucket, ev.key)

    def _current_of(self, bucket: str, key: str) -> Current | None:
        """The bucket's answer for ``key``, asked only if the events cannot be ordered."""
        objects = self.objects
        if objects is None:
            return None
        return lambda: objects.current_etag(bucket, key)


@dataclass(frozen=True)
class Staged:
    """Step 2's output: segments (with their items) placed by index generation ``generation``,
    and, with dual write, the segments of the generation being built (its number, them)."""

    generation: int
    records: list[tuple[SegmentRecord, list[Item]]]
    shadow: tuple[int, list[SegmentRecord], bool] | None = None  # (number, segments, kept for a rollback)


def _created(it: Item) -> datetime:
    """The object's time: its last-modified time, else the event's, else now."""
    modified = it.fetched.modified if it.fetched is not None else None
    return modified or it.event.time or datetime.now(UTC)


def _thumbnails(records: list[tuple[SegmentRecord, list[Item]]], stale: set[int]) -> list[tuple[int, bytes]]:
    """``(id, thumbnail)`` of the items published INDEXED (an item without one is indexed without)."""
    return [
        (it.image_id, it.thumbnail)
        for _, members in records
        for it in members
        if it.image_id is not None and it.image_id not in stale and it.thumbnail is not None
    ]


def _new_image(it: Item) -> NewImage:
    f = it.fetched
    assert f is not None, "a created event reaches the commit stage fetched"
    ev = it.event
    return NewImage(ev.bucket, ev.key, f.etag, f.size, f.content_type, _created(it), ev.sequencer, f.tags)


def _stage(name: str, count: int, extra: int) -> None:
    """One log line per step: operators (and the kill -9 test) see how far a batch got."""
    stages.info("indexer stage=%s images=%d extra=%d t=%.3f", name, count, extra, time.time())
