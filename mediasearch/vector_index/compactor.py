"""The compactor: merge a shard's small segments into one trained segment, dropping deleted ids.

Crash safety comes from ordering, not from cleanup code: (1) read a snapshot of the manifest,
(2) write the merged segment to the store under a fresh id (invisible: no manifest row names it),
(3) in ONE transaction add the merged segment and retire its inputs (Conflict and rollback if any
input is no longer live), (4) garbage-collect. A kill before (3) commits leaves only an orphan in
the store; a kill after leaves retired files. Both are removed by :meth:`Compactor.collect_garbage`
once older than the grace period, which protects writers between upload and publish. The
manifest is never inconsistent, so a restart simply runs again.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.errors import Conflict
from mediasearch.metadata.db import translated
from mediasearch.metadata.segment_manifest import (
    SegmentRecord,
    ShardManifest,
    drop_applied_tombstones,
    known_segment_ids,
    live_generation,
    load_shard_manifest,
    mark_deleted,
    mark_generations_deleted,
    publish_in,
    retired_before,
    retired_generations_before,
)
from mediasearch.settings import Settings
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.generation import Generation, load_generation
from mediasearch.vector_index.segment import load_vectors
from mediasearch.vector_index.store import SegmentStore
from mediasearch.vector_index.upgrade import kept_since
from mediasearch.vector_index.writer import stage_segment

log = logging.getLogger(__name__)
DEFAULTS = Settings.defaults()


@dataclass(frozen=True)
class CompactionResult:
    shard: int
    merged: tuple[str, ...] = ()
    new_segment: str | None = None
    vectors: int = 0
    dropped: int = 0
    garbage: tuple[str, ...] = ()


class Compactor:
    """Compacts shards of one manifest + store. Safe to run again after any crash."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: SegmentStore,
        config: BuildConfig,
        *,
        min_segments: int = DEFAULTS.compact_min_segments,
        max_vectors: int = DEFAULTS.compact_max_vectors,
        gc_grace_s: float = DEFAULTS.gc_grace_s,
        keep_s: float = DEFAULTS.generation_keep_s,
        work_dir: Path | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.config = config
        self.min_segments = min_segments
        self.max_vectors = max_vectors
        self.gc_grace_s = gc_grace_s
        self.keep_s = keep_s  # the generation a switch retired keeps its files this long (rollback)
        self.work_dir = work_dir
        self._held: Generation | None = None

    def compact(self, shard: int, *, force: bool = False) -> CompactionResult:
        """Merge the shard's small segments if there are ``min_segments`` of them (any with
        ``force``: applies deletes), then collect garbage."""
        _stage("start", shard)
        with self.sessions() as session:
            manifest = load_shard_manifest(session, shard)
        inputs = self._pick(manifest.segments, force)
        if not inputs:
            return CompactionResult(shard, garbage=tuple(self.collect_garbage()))
        generation = self._generation(manifest, inputs[0].generation)
        if inputs[0].generation and generation is None:  # a switch retires them anyway
            return CompactionResult(shard, garbage=tuple(self.collect_garbage()))
        ids, vectors, dropped = self._load(inputs, manifest.tombstones)
        _stage("loaded", shard, f"{len(inputs)} segments, {len(ids)} vectors, {dropped} deleted")
        new = self._write(shard, ids, vectors, inputs[0].model_version, generation)
        _stage("stored", shard, new.segment_id if new else "nothing left")
        everything = len(inputs) == len(manifest.segments)
        with translated(f"publishing the compaction of shard {shard}"), self.sessions.begin() as session:
            live = live_generation(session, lock=True)  # a switch waits for this, or this for it
            if (live.number if live is not None else 0) != inputs[0].generation:
                raise Conflict(f"shard {shard}: the index generation changed while compacting")
            publish_in(session, add=[new] if new else [], retire=[r.segment_id for r in inputs])
            if everything:  # no live segment outside the merge can still hold a deleted id
                drop_applied_tombstones(session, shard, manifest.tombstone_mark[0])
        _stage("published", shard, new.segment_id if new else "")
        garbage = self.collect_garbage()
        _stage("done", shard)
        return CompactionResult(
            shard,
            merged=tuple(r.segment_id for r in inputs),
            new_segment=new.segment_id if new else None,
            vectors=len(ids),
            dropped=dropped,
            garbage=tuple(garbage),
        )

    def _pick(self, segments: tuple[SegmentRecord, ...], force: bool) -> list[SegmentRecord]:
        """Small segments of the shard's dominant model version (a model change is a reindex,
        never a merge of incompatible vectors), of one size tier.

        Size-tiered, as LSM stores do: segments are grouped by ``log_{min_segments}(count)`` and
        the smallest tier with ``min_segments`` members is merged, into a segment of the next tier.
        Merging every small segment each time would rebuild the whole shard whenever the indexer
        commits a few more images (quadratic work under steady ingestion); tiers merge each vector
        about log(N) times, and leave at most ``min_segments - 1`` segments per tier.

        A merge writes at most ``max_vectors`` vectors (its smallest members while they fit), and
        segments of that size are left alone: a merge holds its inputs' source vectors in memory
        twice, so this bounds the compactor's memory, and a shard server's extra memory while a
        merged segment loads before its inputs are released. ``force`` merges every small segment
        (to apply deletes everywhere), in one merge, whatever its size."""
        small = [s for s in segments if s.count < self.max_vectors]
        if not small:
            return []
        kind = Counter((s.model_version, s.generation) for s in small).most_common(1)[0][0]
        small = [s for s in small if (s.model_version, s.generation) == kind]
        if force:
            return small
        tiers: dict[int, list[SegmentRecord]] = {}
        for record in small:
            tiers.setdefault(size_tier(record.count, self.min_segments), []).append(record)
        for tier in sorted(tiers):
            members, total = [], 0
            for record in sorted(tiers[tier], key=lambda r: r.count):
                if total + record.count > self.max_vectors:
                    break
                members.append(record)
                total += record.count
            if len(members) >= self.min_segments:
                return members
        return []

    def _load(
        self, inputs: list[SegmentRecord], tombstones: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int]:
        id_parts, vector_parts, dropped = [], [], 0
        for record in inputs:
            folder = self.store.open(record.uri)
            ids, vectors = load_vectors(folder)
            keep = ~np.isin(ids, tombstones)
            dropped += int((~keep).sum())
            id_parts.append(ids[keep])  # boolean indexing copies out of the memory map
            vector_parts.append(vectors[keep])
            self.store.release(record.uri, folder)
        return np.concatenate(id_parts), np.concatenate(vector_parts), dropped

    def _generation(self, manifest: ShardManifest, number: int) -> Generation | None:
        """The generation that placed the inputs, if it is still live (loaded once, kept)."""
        record = manifest.generation
        if not number or record is None or record.number != number:
            return None
        if self._held is None or self._held.number != number:
            self._held = load_generation(self.store, record)
        return self._held

    def _write(
        self, shard: int, ids: np.ndarray, vectors: np.ndarray, version: str, generation: Generation | None
    ) -> SegmentRecord | None:
        if len(ids) == 0:
            return None
        return stage_segment(
            self.store,
            vectors,
            ids,
            shard=shard,
            model_version=version,
            config=self.config,
            work_dir=self.work_dir,
            generation=generation,
        )

    def collect_garbage(self) -> list[str]:
        """Delete files of segments retired before the grace period and of orphans (in the store,
        not in the manifest) older than it. Returns the deleted segment ids."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.gc_grace_s)
        with translated("collecting garbage"), self.sessions.begin() as session:
            retired = retired_before(session, cutoff)
            quantizers = retired_generations_before(session, cutoff)
            kept = kept_since(session, self.keep_s)
        if kept is not None:  # what a rollback returns to
            retired = [r for r in retired if r.retired != kept[1]]
            quantizers = [g for g in quantizers if g.number != kept[0]]
        for record in retired:
            self.store.delete(record.uri)
        for generation in quantizers:
            self.store.delete(generation.quantizer_uri)
        with translated("collecting garbage"), self.sessions.begin() as session:
            mark_deleted(session, [r.segment_id for r in retired])
            mark_generations_deleted(session, [g.number for g in quantizers])
            known = known_segment_ids(session)
        orphans = [
            e for e in self.store.list() if e.segment_id not in known and e.modified < cutoff.timestamp()
        ]
        for entry in orphans:
            log.info("deleting orphan %s", entry.uri)
            self.store.delete(entry.uri)
        return (
            [r.segment_id for r in retired]
            + [g.quantizer_id for g in quantizers]
            + [e.segment_id for e in orphans]
        )


def size_tier(count: int, fanout: int) -> int:
    """0 for 1..fanout-1 vectors, 1 for fanout..fanout**2-1, and so on."""
    return int(math.log(max(count, 1), fanout) + 1e-9)


def _stage(name: str, shard: int, detail: str = "") -> None:
    """One log line per stage: operators (and the crash tests) see how far a run got."""
    log.info("compaction shard=%d stage=%s %s t=%.3f", shard, name, detail, time.time())
