"""The indexer under an index generation: each new vector goes to the shard that owns its nearest
list, and a batch placed by one generation is restaged when another goes live before it publishes.
SQLite, a folder segment store, real FAISS; the vectors stand in for an encoder's."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select

from mediasearch.indexer.commit import Committer, Staged
from mediasearch.indexer.events import ObjectEvent
from mediasearch.indexer.items import Item
from mediasearch.indexer.source import Delivery
from mediasearch.metadata.models import ImageRow
from mediasearch.metadata.segment_manifest import live_generation, load_shard_manifest
from mediasearch.objects import StoredObject
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.generation import load_generation
from mediasearch.vector_index.partition import HashPartitioner
from mediasearch.vector_index.rebalance import Rebalancer
from mediasearch.vector_index.store import LocalFolderStore
from tests.support.index import MODEL, add_segment, clustered, sessions_for
from tests.support.indexer import served_ids

SHARDS = 3
CONFIG = BuildConfig.defaults()


def _items(vectors: np.ndarray, first: int) -> list[Item]:
    out = []
    for n, vector in enumerate(vectors):
        ev = ObjectEvent("created", "photos", f"k{first + n}.jpg", f"e{first + n}")
        it = Item(Delivery([ev]), ev, fetched=StoredObject(ev.etag, 10, "image/jpeg", datetime.now(UTC)))
        it.vector, it.width, it.height = vector, 1, 1
        out.append(it)
    return out


def _indexed(tmp_path: Path):  # type: ignore[no-untyped-def]
    """3 shards, 6,000 exact vectors (ids 10^6..), generation 1 trained on them."""
    sessions = sessions_for(f"sqlite:///{tmp_path / 'meta.db'}")
    store = LocalFolderStore(tmp_path / "store")
    x = clustered(6000, d=32, seed=3)
    ids = np.arange(1_000_000, 1_006_000)
    owner = HashPartitioner(SHARDS).shards_for(ids)
    for s in range(SHARDS):
        add_segment(sessions, store, x[owner == s], ids[owner == s], shard=s)
    rebalancer = Rebalancer(sessions, store, CONFIG, SHARDS, min_vectors=1000)
    rebalancer.run("test")
    return sessions, store, rebalancer


def test_new_vectors_go_to_the_shard_owning_their_nearest_list(tmp_path: Path) -> None:
    sessions, store, _ = _indexed(tmp_path)
    with sessions() as session:
        record = live_generation(session)
    assert record is not None
    generation = load_generation(store, record)
    vectors = clustered(40, d=32, seed=9)
    items = _items(vectors, 0)
    Committer(sessions, store, HashPartitioner(SHARDS), CONFIG, MODEL).commit(items)
    assert {it.outcome for it in items} == {"indexed"}
    expected = generation.owners[generation.assign(vectors)]
    with sessions() as session:
        shard_of = dict(session.execute(select(ImageRow.id, ImageRow.shard)).all())
        for s in range(SHARDS):
            manifest = load_shard_manifest(session, s)
            assert {seg.generation for seg in manifest.segments} == {1}
    assert [shard_of[it.image_id] for it in items] == expected.tolist()
    served = served_ids(sessions, store, SHARDS)
    assert all(served[it.image_id] == 1 for it in items)


def test_a_batch_placed_before_a_switch_is_restaged_for_the_new_generation(tmp_path: Path) -> None:
    sessions, store, rebalancer = _indexed(tmp_path)
    switched = []

    class SwitchAfterStaging(Committer):
        def _stage(self, live: list[Item]) -> Staged:
            staged = super()._stage(live)
            if not switched:  # a rebalance commits between this batch's stage and publish
                switched.append(rebalancer.run("test: second"))
            return staged

    items = _items(clustered(25, d=32, seed=11), 0)
    committer = SwitchAfterStaging(sessions, store, HashPartitioner(SHARDS), CONFIG, MODEL)
    committer.commit(items)
    assert switched and switched[0].generation == 2
    assert {it.outcome for it in items} == {"indexed"}
    with sessions() as session:
        segments = [seg for s in range(SHARDS) for seg in load_shard_manifest(session, s).segments]
    assert {seg.generation for seg in segments} == {2}  # the batch's first staging never published
    served = served_ids(sessions, store, SHARDS)
    assert all(served[it.image_id] == 1 for it in items) and len(served) == 6025
