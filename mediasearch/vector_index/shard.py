"""A shard: the live segments of one shard, searched per segment with tombstones excluded.

Readers never wait for writers. The shard's state is one immutable :class:`ShardView` (segments +
tombstone selector) held in a single attribute; a search reads that attribute once and works on
that view to the end. :meth:`Shard.apply` loads new segments *outside* any reader path, builds a new
view and swaps the attribute (copy-on-write; an attribute store is atomic in Python). A replaced
segment is released by Python reference counting once the last query holding its view returns;
a finaliser then deletes its local cache copy. FAISS releases the GIL while it searches, so
concurrent queries on one shard run in parallel.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mediasearch.errors import InvalidInput, ManifestMismatch
from mediasearch.metadata.segment_manifest import SegmentRecord, ShardManifest
from mediasearch.settings import FromSettings, Settings
from mediasearch.vector_index.merge import merge_topk
from mediasearch.vector_index.segment import open_index
from mediasearch.vector_index.store import SegmentStore

log = logging.getLogger(__name__)
DEFAULT_K = 10
_faiss: Any = faiss  # the stubs lack the SearchParameters keyword constructors


@dataclass(frozen=True)
class SearchParams(FromSettings):
    """Per-request knobs; nprobe and ef_search only matter for IVF segments."""

    k: int
    nprobe: int
    ef_search: int

    def __post_init__(self) -> None:
        if not (0 < self.k <= 10_000 and self.nprobe > 0 and self.ef_search > 0):
            raise InvalidInput(f"bad search parameters: {self}")

    @classmethod
    def from_settings(cls, settings: Settings) -> SearchParams:
        """The deployment's defaults (``MEDIASEARCH_SEARCH_NPROBE``, ``..._EF``), top 10."""
        return cls(k=DEFAULT_K, nprobe=settings.search_nprobe, ef_search=settings.search_ef)


class LoadedSegment:
    """One segment's memory-mapped index, ready to search from many threads at once."""

    def __init__(self, record: SegmentRecord, index: faiss.Index, folder: Path, store: SegmentStore) -> None:
        self.record = record
        self.index = index
        self.ivf = faiss.try_extract_index_ivf(index)
        self.folder = folder
        weakref.finalize(self, store.release, record.uri, folder)

    def search(
        self, queries: np.ndarray, params: SearchParams, selector: faiss.IDSelector | None
    ) -> tuple[np.ndarray, np.ndarray]:
        k = min(params.k, max(1, self.index.ntotal))
        search_params: Any = None
        if self.ivf is not None:
            quantizer = _faiss.SearchParametersHNSW(efSearch=params.ef_search)
            search_params = _faiss.SearchParametersIVF(
                sel=selector, nprobe=min(params.nprobe, self.ivf.nlist), quantizer_params=quantizer
            )
        elif selector is not None:
            search_params = _faiss.SearchParameters(sel=selector)
        scores, ids = self.index.search(queries, k, params=search_params)
        return scores, ids


@dataclass(frozen=True)
class ShardView:
    """Everything one query needs, immutable: swapped whole, never edited."""

    segments: tuple[LoadedSegment, ...] = ()
    tombstones: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    tombstone_mark: tuple[int, int] = (0, 0)
    generation: int = 0
    _selector_parts: tuple[object, ...] = ()

    @property
    def selector(self) -> faiss.IDSelector | None:
        return self._selector_parts[-1] if self._selector_parts else None  # type: ignore[return-value]

    @property
    def count(self) -> int:
        return sum(s.record.count for s in self.segments)


def _selector(tombstones: np.ndarray) -> tuple[object, ...]:
    """IDSelectorNot(IDSelectorBatch(tombstones)); the inner object must outlive the outer, so
    both are kept in the view."""
    if len(tombstones) == 0:
        return ()
    batch = faiss.IDSelectorBatch(np.ascontiguousarray(tombstones, dtype=np.int64))
    return (batch, faiss.IDSelectorNot(batch))


@dataclass(frozen=True)
class ShardStats:
    shard: int
    vectors: int
    segments: tuple[str, ...]
    tombstones: int
    generation: int
    model_versions: tuple[str, ...]
    last_sync: float


class Shard:
    """Serves one shard. Thread-safe: any number of searches, one apply at a time."""

    def __init__(
        self,
        shard_id: int,
        store: SegmentStore,
        *,
        model_version: str | None = None,
        verify_checksums: bool = True,
        mmap_ivf: bool = False,
    ) -> None:
        self.shard_id = shard_id
        self.mmap_ivf = mmap_ivf
        self.store = store
        self.model_version = model_version
        self.verify_checksums = verify_checksums
        self._view = ShardView()
        self._apply_lock = threading.Lock()  # serialises writers only; search never takes it
        self.last_sync = 0.0

    @property
    def view(self) -> ShardView:
        return self._view

    def search(
        self, queries: np.ndarray, params: SearchParams, model_version: str = ""
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query over every live segment; deleted ids never come back."""
        view = self._view  # one read: this query uses this view to the end, whatever apply does
        queries = _check_queries(queries, view)
        if model_version and any(s.record.model_version != model_version for s in view.segments):
            raise ManifestMismatch(f"shard {self.shard_id} does not serve model version {model_version}")
        if not view.segments:
            empty = np.full((len(queries), params.k), -1, dtype=np.int64)
            return np.full(empty.shape, -np.inf, dtype=np.float32), empty
        selector = view.selector
        parts = [seg.search(queries, params, selector) for seg in view.segments]
        return merge_topk([p[0] for p in parts], [p[1] for p in parts], params.k)

    def apply(self, manifest: ShardManifest) -> bool:
        """Bring the view to ``manifest``; all-or-nothing. Returns True when the view changed.

        If any new segment cannot be loaded, the current (complete, maybe stale) view stays and
        the error propagates: serving a view with a merged segment's inputs retired but the merged
        segment missing would silently drop vectors.
        """
        with self._apply_lock:
            current = self._view
            wanted = [r for r in manifest.segments if self._serves(r)]
            loaded = {s.record.segment_id: s for s in current.segments}
            if [r.segment_id for r in wanted] == list(
                loaded
            ) and manifest.tombstone_mark == current.tombstone_mark:
                self.last_sync = time.time()
                return False
            segments = tuple(loaded.get(r.segment_id) or self._load(r) for r in wanted)
            same_tombstones = manifest.tombstone_mark == current.tombstone_mark
            self._view = ShardView(
                segments=segments,
                tombstones=manifest.tombstones,
                tombstone_mark=manifest.tombstone_mark,
                generation=current.generation + 1,
                _selector_parts=current._selector_parts
                if same_tombstones
                else _selector(manifest.tombstones),
            )
            self.last_sync = time.time()
        log.info(
            "shard %d now serves %d segments, %d vectors, %d tombstones",
            self.shard_id,
            len(segments),
            self._view.count,
            len(manifest.tombstones),
        )
        return True

    def _serves(self, record: SegmentRecord) -> bool:
        if self.model_version and record.model_version != self.model_version:
            log.warning(
                "shard %d skips segment %s: model %s, serving %s",
                self.shard_id,
                record.segment_id,
                record.model_version,
                self.model_version,
            )
            return False
        return True

    def _load(self, record: SegmentRecord) -> LoadedSegment:
        started = time.perf_counter()
        folder = self.store.open(record.uri, verify_checksums=self.verify_checksums)
        segment = LoadedSegment(record, open_index(folder, mmap_ivf=self.mmap_ivf), folder, self.store)
        log.info("loaded segment %s in %.3fs", record.segment_id, time.perf_counter() - started)
        return segment

    def stats(self) -> ShardStats:
        view = self._view
        return ShardStats(
            shard=self.shard_id,
            vectors=view.count,
            segments=tuple(s.record.segment_id for s in view.segments),
            tombstones=len(view.tombstones),
            generation=view.generation,
            model_versions=tuple(sorted({s.record.model_version for s in view.segments})),
            last_sync=self.last_sync,
        )

    def close(self) -> None:
        """Drop every segment (released once in-flight queries finish)."""
        with self._apply_lock:
            self._view = ShardView(generation=self._view.generation + 1)


def _check_queries(queries: np.ndarray, view: ShardView) -> np.ndarray:
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if queries.ndim != 2:
        raise InvalidInput(f"queries must be (n, d); got {queries.shape}")
    if view.segments and queries.shape[1] != view.segments[0].index.d:
        raise InvalidInput(f"query dim {queries.shape[1]} != index dim {view.segments[0].index.d}")
    return queries


__all__ = ["LoadedSegment", "SearchParams", "Shard", "ShardStats", "ShardView"]
