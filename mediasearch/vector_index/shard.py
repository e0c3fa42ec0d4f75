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
from mediasearch.vector_index.generation import Generation, load_generation
from mediasearch.vector_index.merge import merge_topk
from mediasearch.vector_index.segment import map_vectors, open_index
from mediasearch.vector_index.store import SegmentStore

log = logging.getLogger(__name__)
DEFAULT_K = 10
_faiss: Any = faiss  # the stubs lack the SearchParameters keyword constructors


@dataclass(frozen=True)
class SearchParams(FromSettings):
    """Per-request knobs. ``nprobe``: inverted lists scanned per query in the whole index (one
    generation's lists, spread over the shards that own them); ``rerank``: each segment keeps
    ``k * rerank`` candidates by their compressed codes and re-scores them exactly against the
    stored vectors, so recall is not capped by the encoding; ``ef_search``: the HNSW efSearch of a
    quantizer that is a graph (large nlist)."""

    k: int
    nprobe: int
    ef_search: int
    rerank: int = 2

    def __post_init__(self) -> None:
        if not (0 < self.k <= 10_000 and self.nprobe > 0 and self.ef_search > 0):
            raise InvalidInput(f"bad search parameters: {self}")
        if not 1 <= self.rerank <= 100:
            raise InvalidInput(f"rerank must be 1..100 (candidates per result); got {self.rerank}")

    @property
    def candidates(self) -> int:
        return self.k * self.rerank

    @classmethod
    def from_settings(cls, settings: Settings) -> SearchParams:
        """The deployment's defaults (``MEDIASEARCH_SEARCH_NPROBE``, ``..._EF``, ``..._RERANK``), top 10."""
        return cls(
            k=DEFAULT_K,
            nprobe=settings.search_nprobe,
            ef_search=settings.search_ef,
            rerank=settings.search_rerank,
        )


class LoadedSegment:
    """One segment's index, ready to search from many threads at once. A segment of an index
    generation also maps its id-sorted ids and source vectors, to re-rank candidates exactly."""

    def __init__(self, record: SegmentRecord, index: faiss.Index, folder: Path, store: SegmentStore) -> None:
        self.record = record
        self.index = index
        self.ivf: Any = faiss.try_extract_index_ivf(index)
        self.folder = folder
        self.ids: np.ndarray | None = None
        self.vectors: np.ndarray | None = None
        if record.generation:
            self.ids, self.vectors = map_vectors(folder)
        weakref.finalize(self, store.release, record.uri, folder)

    def search(
        self,
        queries: np.ndarray,
        params: SearchParams,
        selector: faiss.IDSelector | None,
        lists: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        if lists is not None and self.record.generation:
            return self._search_lists(queries, params, selector, lists)
        k = min(params.k, max(1, self.index.ntotal))
        search_params: Any = None
        if self.ivf is not None:  # a per-segment IVF of the layout before generations
            quantizer = _faiss.SearchParametersHNSW(efSearch=params.ef_search)
            search_params = _faiss.SearchParametersIVF(
                sel=selector, nprobe=min(params.nprobe, self.ivf.nlist), quantizer_params=quantizer
            )
        elif selector is not None:
            search_params = _faiss.SearchParameters(sel=selector)
        scores, ids = self.index.search(queries, k, params=search_params)
        return scores, ids

    def _search_lists(
        self, queries: np.ndarray, params: SearchParams, selector: faiss.IDSelector | None, lists: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scan only the given lists (-1: skip), keep ``params.candidates`` by code, re-rank them."""
        nq, nprobe = lists.shape
        k = min(params.candidates, max(1, self.index.ntotal))
        scores = np.empty((nq, k), dtype=np.float32)
        ids = np.empty((nq, k), dtype=np.int64)
        coarse = np.zeros((nq, nprobe), dtype=np.float32)  # codes are not residuals: unused
        search_params = _faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        self.ivf.search_preassigned_c(
            nq, faiss.swig_ptr(queries), k, faiss.swig_ptr(lists), faiss.swig_ptr(coarse),
            faiss.swig_ptr(scores), faiss.swig_ptr(ids), False, search_params, None,
        )  # fmt: skip
        return self._rerank(queries, ids, params.k)

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products of the candidates (found in the id-sorted vectors), the top ``k``
        best first, padded with -1 / -inf. Written for the one-query case (a gather and a matrix-
        vector product: ~25 us for 40 candidates), which is most calls."""
        assert self.ids is not None and self.vectors is not None
        nq = len(queries)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        ids = np.full((nq, k), -1, dtype=np.int64)
        for row in range(nq):
            found = candidates[row]
            found = found[found >= 0]
            if not len(found):
                continue
            # einsum, not `@`: a BLAS call per tiny product contends for BLAS's own threads when
            # a shard server's search threads run at once (most of its time at concurrency 8)
            exact = np.einsum("cd,d->c", self.vectors[np.searchsorted(self.ids, found)], queries[row])
            top = np.argsort(-exact, kind="stable")[:k]
            scores[row, : len(top)] = exact[top]
            ids[row, : len(top)] = found[top]
        return scores, ids


@dataclass(frozen=True)
class ShardView:
    """Everything one query needs, immutable: swapped whole, never edited."""

    segments: tuple[LoadedSegment, ...] = ()
    tombstones: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    tombstone_mark: tuple[int, int] = (0, 0)
    generation: int = 0
    _selector_parts: tuple[object, ...] = ()
    quantizer: Generation | None = None  # the index generation its segments belong to

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
    index_generation: int = 0


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
        self,
        queries: np.ndarray,
        params: SearchParams,
        model_version: str = "",
        *,
        lists: np.ndarray | None = None,
        generation: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query over every live segment; deleted ids never come back.

        ``lists`` ((nq, nprobe) list ids of index generation ``generation``, -1 for lists another
        shard owns) are the router's choice. Without them, or when they belong to another
        generation than the one this shard serves (a switch in progress: the router and the shard
        catch up with the manifest at slightly different times), the shard probes its own copy
        of the quantizer and scans the probed lists it owns."""
        view = self._view  # one read: this query uses this view to the end, whatever apply does
        # the model first: a query of another model (a switch under way) is that, not a bad width
        if model_version and any(s.record.model_version != model_version for s in view.segments):
            raise ManifestMismatch(f"shard {self.shard_id} does not serve model version {model_version}")
        queries = _check_queries(queries, view)
        empty = np.full((len(queries), params.k), -1, dtype=np.int64)
        if not view.segments:
            return np.full(empty.shape, -np.inf, dtype=np.float32), empty
        if view.quantizer is not None:
            lists = self._own_lists(view.quantizer, queries, params, lists, generation)
            if lists is None:
                return np.full(empty.shape, -np.inf, dtype=np.float32), empty
        selector = view.selector
        parts = [seg.search(queries, params, selector, lists) for seg in view.segments]
        if len(parts) == 1 and lists is not None and view.segments[0].record.generation:  # re-ranked, sorted
            return parts[0]
        return merge_topk([p[0] for p in parts], [p[1] for p in parts], params.k)

    def _own_lists(
        self,
        quantizer: Generation,
        queries: np.ndarray,
        params: SearchParams,
        lists: np.ndarray | None,
        generation: int,
    ) -> np.ndarray | None:
        if lists is not None and generation == quantizer.number:
            lists = np.ascontiguousarray(lists, dtype=np.int64)
            if lists.ndim != 2 or len(lists) != len(queries) or lists.max(initial=-1) >= quantizer.nlist:
                raise InvalidInput(f"lists of shape {lists.shape} do not fit {len(queries)} queries")
            return lists
        return quantizer.route(quantizer.probe(queries, params.nprobe)).get(self.shard_id)

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
            quantizer = self._quantizer(manifest, current.quantizer)
            if (
                [r.segment_id for r in wanted] == list(loaded)
                and manifest.tombstone_mark == current.tombstone_mark
                and quantizer is current.quantizer
            ):
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
                quantizer=quantizer,
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

    def _quantizer(self, manifest: ShardManifest, current: Generation | None) -> Generation | None:
        """The live generation's quantizer: the one held if it is still live, else loaded."""
        record = manifest.generation
        if record is None:
            return None
        if current is not None and current.number == record.number:
            return current
        return load_generation(self.store, record, verify_checksums=self.verify_checksums)

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
            index_generation=view.quantizer.number if view.quantizer is not None else 0,
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
