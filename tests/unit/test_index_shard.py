"""Shard: exact merged search, tombstones, copy-on-write swaps under concurrent queries."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mediasearch.errors import CorruptData, ManifestMismatch, NotFound
from mediasearch.metadata.segment_manifest import SegmentRecord, ShardManifest
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.generation import Generation, GenerationRecord
from mediasearch.vector_index.merge import merge_topk
from mediasearch.vector_index.shard import SearchParams, Shard
from mediasearch.vector_index.store import MemoryStore
from mediasearch.vector_index.writer import stage_segment
from tests.support.index import MODEL, brute_force, clustered, recall, store_generation, unit_vectors


def _manifest(
    records: list[SegmentRecord],
    tombstones: list[int] | None = None,
    mark: int = 0,
    generation: GenerationRecord | None = None,
) -> ShardManifest:
    stones = np.unique(np.asarray(tombstones or [], dtype=np.int64))
    return ShardManifest(0, tuple(records), stones, (mark, len(stones)), generation)


def _stage(
    store: MemoryStore,
    x: np.ndarray,
    ids: np.ndarray,
    *,
    model_version: str = MODEL,
    generation: Generation | None = None,
) -> SegmentRecord:
    return stage_segment(
        store,
        x,
        ids,
        shard=0,
        model_version=model_version,
        config=BuildConfig.defaults(),
        generation=generation,
    )


def _generation_shard(
    store: MemoryStore, x: np.ndarray, ids: np.ndarray, parts: int = 1, number: int = 1
) -> tuple[Shard, Generation, GenerationRecord, list[SegmentRecord]]:
    """A shard serving ``x`` in ``parts`` segments of a generation trained on ``x`` (one shard owns
    every list; SQ8 codes, so exact scores come from re-ranking)."""
    config = BuildConfig.defaults(encoding="SQ8")
    generation, record, _ = store_generation(store, x, number=number, config=config)
    chunks = np.array_split(np.arange(len(ids)), parts)
    segments = [_stage(store, x[c], ids[c], generation=generation) for c in chunks]
    shard = Shard(0, store)
    shard.apply(_manifest(segments, generation=record))
    return shard, generation, record, segments


def test_shard_search_over_several_segments_matches_brute_force(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    x, q = unit_vectors(3000, seed=1), unit_vectors(25, seed=2)
    ids = np.arange(3000, dtype=np.int64)
    records = [_stage(store, x[i : i + 1000], ids[i : i + 1000]) for i in (0, 1000, 2000)]
    shard = Shard(0, store)
    shard.apply(_manifest(records))
    scores, found = shard.search(q, SearchParams.defaults(k=10))
    truth_scores, truth = brute_force(x, ids, q, 10)
    np.testing.assert_array_equal(found, truth)
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)


@pytest.mark.parametrize("layout", ["flat", "generation"])
def test_deleted_ids_never_come_back(tmp_path: Path, layout: str) -> None:
    store = MemoryStore(tmp_path)
    x = clustered(4000, seed=3)
    ids = np.arange(4000, dtype=np.int64)
    generation, gen_record = None, None
    if layout == "generation":
        generation, gen_record, _ = store_generation(store, x)
    record = _stage(store, x, ids, generation=generation)
    deleted = ids[::3]
    shard = Shard(0, store)
    shard.apply(_manifest([record], list(deleted), mark=1, generation=gen_record))
    assert shard.stats().index_generation == (1 if generation else 0)
    _, found = shard.search(
        x[deleted[:200]], SearchParams.defaults(k=20, nprobe=64, ef_search=128)
    )  # the deleted ones
    assert not np.isin(found, deleted).any()
    assert (found >= 0).all()


def test_segment_swaps_under_concurrent_query_load_give_zero_errors(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    x = unit_vectors(1200, seed=4)
    ids = np.arange(1200, dtype=np.int64)
    parts = [_stage(store, x[i : i + 400], ids[i : i + 400]) for i in (0, 400, 800)]
    states = [_manifest(parts[:1]), _manifest(parts[:2]), _manifest(parts), _manifest(parts[1:])]
    shard = Shard(0, store)
    shard.apply(states[0])
    errors: list[BaseException] = []
    stop = threading.Event()
    searches = [0]

    def query() -> None:
        q = unit_vectors(4, seed=threading.get_ident() % 1000)
        while not stop.is_set():
            try:
                _, found = shard.search(q, SearchParams.defaults(k=5))
                assert (found >= 0).all()
                searches[0] += 1
            except BaseException as exc:  # the test counts every kind of failure
                errors.append(exc)

    threads = [threading.Thread(target=query) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(60):
        shard.apply(states[i % len(states)])
        time.sleep(0.005)
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and searches[0] > 50
    assert shard.stats().generation >= 60


def test_apply_keeps_the_complete_old_view_when_a_new_segment_cannot_load(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "cache")
    x = unit_vectors(200)
    good = _stage(store, x, np.arange(200))
    shard = Shard(0, store)
    shard.apply(_manifest([good]))
    broken = SegmentRecord("missing", 0, "memory://missing", 5, MODEL, "IDMap,Flat")
    with pytest.raises(NotFound, match="missing"):
        shard.apply(_manifest([broken]))
    assert shard.stats().segments == (good.segment_id,)
    store._files[good.segment_id]["ids.npy"] = b"corrupt"
    assert shard.search(x[:1], SearchParams.defaults(k=1))[1][0, 0] == 0  # still served from its local copy
    shard.close()  # last holder gone: the local copy is deleted
    with pytest.raises(CorruptData):
        Shard(0, store).apply(_manifest([good]))  # so this is a fresh download, and it is verified


def test_released_segment_cache_copy_is_deleted_when_no_query_holds_it(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "cache")
    a = _stage(store, unit_vectors(100, seed=1), np.arange(100))
    b = _stage(store, unit_vectors(100, seed=2), np.arange(100, 200))
    shard = Shard(0, store)
    shard.apply(_manifest([a]))
    held = shard.view  # a query in flight holds the old view
    shard.apply(_manifest([b]))
    assert (tmp_path / "cache" / a.segment_id).exists()
    del held
    assert not (tmp_path / "cache" / a.segment_id).exists()


def test_shard_only_serves_segments_of_its_model_version(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    old = _stage(store, unit_vectors(50, seed=1), np.arange(50), model_version="old")
    new = _stage(store, unit_vectors(50, seed=2), np.arange(50, 100))
    shard = Shard(0, store, model_version=MODEL)
    shard.apply(_manifest([old, new]))
    assert shard.stats().segments == (new.segment_id,)
    with pytest.raises(ManifestMismatch):
        shard.search(unit_vectors(1), SearchParams.defaults(), model_version="other")


def test_merge_breaks_score_ties_by_ascending_id() -> None:
    scores = [np.array([[0.9, 0.5]]), np.array([[0.9, 0.5]])]
    ids = [np.array([[7, 1]]), np.array([[3, -1]])]
    s, i = merge_topk(scores, ids, 4)
    assert i.tolist() == [[3, 7, 1, -1]]
    assert s[0, :3].tolist() == pytest.approx([0.9, 0.9, 0.5]) and s[0, 3] == -np.inf


def test_generation_shard_recall_rises_with_nprobe_and_is_exact_when_every_list_is_probed(
    tmp_path: Path,
) -> None:
    store = MemoryStore(tmp_path)
    x, q = clustered(8000, seed=5), clustered(50, seed=6)
    ids = np.arange(8000, dtype=np.int64)
    shard, generation, _, _ = _generation_shard(store, x, ids, parts=2)
    assert shard.view.quantizer is not None and shard.view.quantizer.nlist == generation.nlist
    nlist = generation.nlist
    assert nlist == 64  # 8000 vectors: 4 * sqrt(8000) = 358, capped by 64 training vectors a list
    assert all(s.ivf.nlist == nlist for s in shard.view.segments)
    assert shard.view.segments[0].record.index_type == "IVF64,SQ8@g1"  # compressed codes, re-ranked
    truth_scores, truth = brute_force(x, ids, q, 10)
    found = [
        recall(shard.search(q, SearchParams.defaults(k=10, nprobe=nprobe))[1], truth)
        for nprobe in (1, 4, 16, nlist)
    ]
    assert found == sorted(found) and len(set(found)) == len(found), found  # each step finds more
    assert found[0] < 0.5 and found[-1] == 1.0, found  # one list of 64 misses most; all of them, none
    scores, everything = shard.search(q, SearchParams.defaults(k=10, nprobe=nlist))
    np.testing.assert_array_equal(everything, truth)  # re-ranked: exact scores, the exact order
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)


def test_generation_shard_scans_only_the_routers_lists_of_its_own_generation(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    x, q = clustered(4000, seed=7), clustered(20, seed=8)
    ids = np.arange(4000, dtype=np.int64)
    shard, generation, _, _ = _generation_shard(store, x, ids, parts=3)
    truth = brute_force(x, ids, q, 10)[1]
    wide = SearchParams.defaults(k=10, nprobe=generation.nlist)
    one = generation.probe(q, 1)
    routed = shard.search(q, wide, lists=one, generation=1)  # the router's lists, not params.nprobe
    np.testing.assert_array_equal(routed[1], shard.search(q, SearchParams.defaults(k=10, nprobe=1))[1])
    assert recall(routed[1], truth) < 0.9
    skipped = shard.search(q, wide, lists=np.full_like(one, -1), generation=1)  # another shard owns them
    assert (skipped[1] == -1).all() and np.isneginf(skipped[0]).all()
    # lists of another generation (a switch in flight): the shard probes its own quantizer instead
    stale = shard.search(q, wide, lists=np.full_like(one, -1), generation=2)
    np.testing.assert_array_equal(stale[1], truth)


def test_shard_loads_the_quantizer_of_a_new_generation_once(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    x, q = clustered(3000, seed=9), clustered(10, seed=10)
    ids = np.arange(3000, dtype=np.int64)
    shard, _, first, segments = _generation_shard(store, x, ids)
    held = shard.view.quantizer
    assert held is not None and held.number == 1 and shard.stats().index_generation == 1
    assert not shard.apply(_manifest(segments, generation=first))  # nothing changed: nothing reloaded
    assert shard.view.quantizer is held
    second, record, _ = store_generation(store, x, number=2, config=BuildConfig.defaults(encoding="Flat"))
    moved = _stage(store, x, ids, generation=second)
    assert shard.apply(_manifest([moved], generation=record))
    assert shard.view.quantizer is not held and shard.stats().index_generation == 2
    assert shard.stats().segments == (moved.segment_id,)
    _, found = shard.search(q, SearchParams.defaults(k=10, nprobe=second.nlist))
    np.testing.assert_array_equal(found, brute_force(x, ids, q, 10)[1])
