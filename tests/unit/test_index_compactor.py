"""Compactor: merge small segments into one trained segment, drop deletes, collect garbage."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from mediasearch.errors import Conflict
from mediasearch.metadata.segment_manifest import add_tombstones, load_shard_manifest, publish
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.compactor import Compactor
from mediasearch.vector_index.segment import open_index
from mediasearch.vector_index.shard import SearchParams, Shard
from mediasearch.vector_index.store import LocalFolderStore
from mediasearch.vector_index.writer import stage_segment
from tests.support.index import add_segment, brute_force, clustered, recall, sqlite_sessions

CONFIG = BuildConfig.defaults(flat_max=2000)


def test_compaction_merges_small_segments_into_one_ivf_and_drops_tombstoned_vectors(tmp_path: Path) -> None:
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    x, q = clustered(6000, seed=1), clustered(30, seed=2)
    ids = np.arange(6000, dtype=np.int64)
    for i in range(0, 6000, 1500):
        add_segment(sessions, store, x[i : i + 1500], ids[i : i + 1500], config=CONFIG)
    deleted = ids[::10]
    with sessions.begin() as s:
        add_tombstones(s, deleted, shard=0)
    result = Compactor(sessions, store, CONFIG, min_segments=4, gc_grace_s=0).compact(0)
    assert len(result.merged) == 4 and result.vectors == 5400 and result.dropped == 600
    with sessions() as s:
        manifest = load_shard_manifest(s, 0)
    assert [r.segment_id for r in manifest.segments] == [result.new_segment]
    assert manifest.segments[0].index_type.startswith("IVF") and len(manifest.tombstones) == 0
    assert sorted(e.segment_id for e in store.list()) == [result.new_segment]  # inputs collected
    shard = Shard(0, store)
    shard.apply(manifest)
    _, found = shard.search(q, SearchParams.defaults(k=10, nprobe=64, ef_search=128))
    assert not np.isin(found, deleted).any()
    assert recall(found, brute_force(x, ids, q, 10, excluded=deleted)[1]) >= 0.99
    assert faiss.extract_index_ivf(open_index(shard.view.segments[0].folder)).nlist >= 8


def test_compaction_waits_for_enough_small_segments(tmp_path: Path) -> None:
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    x = clustered(300)
    add_segment(sessions, store, x, np.arange(300))
    result = Compactor(sessions, store, CONFIG, min_segments=2).compact(0)
    assert result.new_segment is None and result.merged == ()


def test_compaction_that_loses_a_race_rolls_back_and_leaves_only_garbage(tmp_path: Path) -> None:
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    x = clustered(400)
    a = add_segment(sessions, store, x[:200], np.arange(200))
    b = add_segment(sessions, store, x[200:], np.arange(200, 400))
    winner = stage_segment(store, x, np.arange(400), shard=0, model_version=a.model_version, config=CONFIG)

    class RacingCompactor(Compactor):
        def _write(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            publish(sessions, add=[winner], retire=[a.segment_id, b.segment_id])  # someone else wins
            return super()._write(*args, **kwargs)

    with pytest.raises(Conflict):
        RacingCompactor(sessions, store, CONFIG, min_segments=2, gc_grace_s=0).compact(0)
    with sessions() as s:
        assert [r.segment_id for r in load_shard_manifest(s, 0).segments] == [winner.segment_id]
    garbage = Compactor(sessions, store, CONFIG, gc_grace_s=0).collect_garbage()
    assert len(garbage) == 3  # a and b (retired) and the loser's orphan
    assert [e.segment_id for e in store.list()] == [winner.segment_id]


def test_garbage_collection_spares_unpublished_segments_younger_than_the_grace_period(tmp_path: Path) -> None:
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    staged = stage_segment(store, clustered(50), np.arange(50), shard=0, model_version="m", config=CONFIG)
    assert Compactor(sessions, store, CONFIG, gc_grace_s=3600).collect_garbage() == []
    assert Compactor(sessions, store, CONFIG, gc_grace_s=0).collect_garbage() == [staged.segment_id]


def test_compaction_merges_one_size_tier_at_a_time_and_leaves_big_segments_alone(tmp_path: Path) -> None:
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    x = clustered(3000, seed=3)
    add_segment(sessions, store, x[:2500], np.arange(2500), config=CONFIG)  # an earlier merge
    for i in range(2500, 3000, 100):  # five batches since
        add_segment(sessions, store, x[i : i + 100], np.arange(i, i + 100), config=CONFIG)
    result = Compactor(sessions, store, CONFIG, min_segments=4, gc_grace_s=0).compact(0)
    assert len(result.merged) == 5 and result.vectors == 500
    with sessions() as s:
        assert sorted(r.count for r in load_shard_manifest(s, 0).segments) == [500, 2500]
    assert Compactor(sessions, store, CONFIG, min_segments=4).compact(0).merged == ()  # tiers 4 and 5
    assert len(Compactor(sessions, store, CONFIG, min_segments=4).compact(0, force=True).merged) == 2


def test_a_merge_writes_at_most_max_vectors_and_leaves_segments_of_that_size_alone(tmp_path: Path) -> None:
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    x = clustered(700, seed=5)
    for i in range(0, 600, 100):  # six segments of one tier
        add_segment(sessions, store, x[i : i + 100], np.arange(i, i + 100), config=CONFIG)
    add_segment(sessions, store, x[600:], np.arange(600, 700), config=CONFIG)
    result = Compactor(sessions, store, CONFIG, min_segments=4, max_vectors=450, gc_grace_s=0).compact(0)
    assert len(result.merged) == 4 and result.vectors == 400  # a fifth would pass 450
    with sessions() as s:
        assert sorted(r.count for r in load_shard_manifest(s, 0).segments) == [100, 100, 100, 400]
    # the 400 is below the cap but alone in its tier; three 100s are too few: nothing to do
    assert Compactor(sessions, store, CONFIG, min_segments=4, max_vectors=450).compact(0).merged == ()
    # at the cap, a segment is never an input again
    capped = Compactor(sessions, store, CONFIG, min_segments=2, max_vectors=400, gc_grace_s=0).compact(0)
    assert len(capped.merged) == 3 and capped.vectors == 300
