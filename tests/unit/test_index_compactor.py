"""Compactor: merge small segments (in their generation's lists), drop deletes, collect garbage."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.errors import Conflict
from mediasearch.metadata.segment_manifest import (
    SegmentRecord,
    ShardManifest,
    add_tombstones,
    load_shard_manifest,
    publish,
)
from mediasearch.vector_index.builder import FLAT, BuildConfig
from mediasearch.vector_index.compactor import Compactor
from mediasearch.vector_index.rebalance import Rebalancer
from mediasearch.vector_index.segment import open_index
from mediasearch.vector_index.shard import SearchParams, Shard
from mediasearch.vector_index.store import LocalFolderStore
from mediasearch.vector_index.writer import stage_segment
from tests.support.index import (
    add_segment,
    brute_force,
    clustered,
    publish_generation,
    recall,
    sqlite_sessions,
)

CONFIG = BuildConfig.defaults()


def _lists_of(store: LocalFolderStore, record: SegmentRecord) -> dict[int, int]:
    """id -> inverted list, as the segment's file holds them."""
    index = open_index(store.open(record.uri))
    ivf = faiss.extract_index_ivf(index)  # a view into ``index``
    out = {}
    for lst in range(ivf.nlist):
        size = ivf.invlists.list_size(lst)
        out.update(dict.fromkeys(faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), size).tolist(), lst))
    return out


def _live(sessions: sessionmaker[Session], shard: int = 0) -> ShardManifest:
    with sessions() as s:
        return load_shard_manifest(s, shard)


def test_compaction_merges_generation_segments_into_one_in_the_same_lists_and_drops_tombstoned_vectors(
    tmp_path: Path,
) -> None:
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    x, q = clustered(8000, seed=1), clustered(30, seed=2)
    ids = np.arange(8000, dtype=np.int64)
    generation, record = publish_generation(sessions, store, x, num_shards=2)
    owner = generation.owners[generation.assign(x)]
    for shard in (0, 1):
        mine = ids[owner == shard]
        for part in np.array_split(mine, 4):
            add_segment(sessions, store, x[part], part, shard=shard, generation=generation)
    deleted = ids[::10]
    with sessions.begin() as s:
        add_tombstones(s, deleted[owner[deleted] == 0], shard=0)
    before = _live(sessions)
    placed = {}
    for segment in before.segments:
        placed.update(_lists_of(store, segment))
    shard0 = ids[owner == 0]
    gone = np.intersect1d(shard0, deleted)
    shard = Shard(0, store)
    shard.apply(before)
    params = SearchParams.defaults(k=10, nprobe=24)  # of 64 lists, half of them on this shard
    truth = brute_force(x[shard0], shard0, q, 10, excluded=gone)[1]
    recall_before = recall(shard.search(q, params)[1], truth)

    result = Compactor(sessions, store, CONFIG, min_segments=4, gc_grace_s=0).compact(0)
    assert (
        len(result.merged) == 4 and result.vectors == len(shard0) - len(gone) and result.dropped == len(gone)
    )
    manifest = _live(sessions)
    assert [r.segment_id for r in manifest.segments] == [result.new_segment]
    merged = manifest.segments[0]
    assert (merged.shard, merged.generation, merged.index_type) == (0, 1, generation.factory)
    assert len(manifest.tombstones) == 0 and manifest.generation == record
    assert len(_live(sessions, 1).segments) == 4  # the other shard is not touched
    lists = _lists_of(store, merged)
    assert sorted(lists) == np.setdiff1d(shard0, gone).tolist()
    assert all(lists[i] == placed[i] for i in lists)  # every vector stays in its list
    shard1 = {s.segment_id for s in _live(sessions, 1).segments}
    assert {e.segment_id for e in store.list()} == {result.new_segment, record.quantizer_id} | shard1
    shard.apply(manifest)
    _, found = shard.search(q, params)
    assert not np.isin(found, deleted).any()
    assert recall(found, truth) >= recall_before - 0.02 and recall_before > 0.8
    _, everything = shard.search(q, SearchParams.defaults(k=10, nprobe=generation.nlist))
    np.testing.assert_array_equal(everything, truth)


def test_compaction_without_a_generation_merges_into_one_exact_flat_segment(tmp_path: Path) -> None:
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    x, q = clustered(2000, seed=3), clustered(20, seed=4)
    ids = np.arange(2000, dtype=np.int64)
    for part in np.array_split(ids, 4):
        add_segment(sessions, store, x[part], part)
    deleted = ids[::7]
    with sessions.begin() as s:
        add_tombstones(s, deleted, shard=0)
    result = Compactor(sessions, store, CONFIG, min_segments=4, gc_grace_s=0).compact(0)
    assert len(result.merged) == 4 and result.dropped == len(deleted)
    manifest = _live(sessions)
    merged = manifest.segments[0]
    assert [merged.segment_id] == [result.new_segment] and manifest.generation is None
    assert (merged.generation, merged.index_type) == (0, FLAT) and len(manifest.tombstones) == 0
    shard = Shard(0, store)
    shard.apply(manifest)
    _, found = shard.search(q, SearchParams.defaults(k=10))
    np.testing.assert_array_equal(found, brute_force(x, ids, q, 10, excluded=deleted)[1])


@pytest.mark.parametrize("inputs_of", [0, 1], ids=["exact-layout", "generation-1"])
def test_compaction_racing_a_generation_switch_loses_and_leaves_the_manifest_consistent(
    tmp_path: Path, inputs_of: int
) -> None:
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    x = clustered(2000, seed=5)
    ids = np.arange(2000, dtype=np.int64)
    generation = publish_generation(sessions, store, x)[0] if inputs_of else None
    for part in np.array_split(ids, 4):
        add_segment(sessions, store, x[part], part, generation=generation)
    deleted = ids[::9]
    with sessions.begin() as s:
        add_tombstones(s, deleted, shard=0)
    switched = []

    class RacingCompactor(Compactor):
        def _write(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            rebalancer = Rebalancer(sessions, store, CONFIG, 1, min_vectors=1000)
            switched.append(rebalancer.run("a switch while compacting"))  # it wins the race
            return super()._write(*args, **kwargs)

    with pytest.raises(Conflict, match="generation changed"):
        RacingCompactor(sessions, store, CONFIG, min_segments=4, gc_grace_s=0).compact(0)
    manifest = _live(sessions)
    live = inputs_of + 1
    assert switched[0].generation == live and manifest.generation is not None
    assert manifest.generation.number == live
    assert {r.generation for r in manifest.segments} == {live}  # only the new generation's segments
    served = np.concatenate([np.load(store.open(r.uri) / "ids.npy") for r in manifest.segments])
    assert len(np.unique(served)) == len(served)
    np.testing.assert_array_equal(
        np.sort(np.setdiff1d(served, manifest.tombstones)), np.setdiff1d(ids, deleted)
    )
    # the loser's merged segment, the retired inputs and a retired quantizer are garbage now
    garbage = Compactor(sessions, store, CONFIG, gc_grace_s=0).collect_garbage()
    assert len(garbage) == 4 + 1 + inputs_of
    kept = {r.segment_id for r in manifest.segments} | {manifest.generation.quantizer_id}
    assert {e.segment_id for e in store.list()} == kept


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
