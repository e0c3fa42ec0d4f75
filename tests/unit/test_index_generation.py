"""Index generations: training, list ownership and routing, the stored artifact, segments of a
generation, recall through the router, and rebalancing on a SQLite manifest."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.errors import CorruptData
from mediasearch.metadata.models import (
    INDEXED,
    LIVE,
    RETIRED,
    GenerationRow,
    ImageRow,
    SegmentRow,
    TombstoneRow,
)
from mediasearch.metadata.segment_manifest import (
    SegmentRecord,
    ShardManifest,
    add_tombstones,
    known_segment_ids,
    live_generation,
    load_shard_manifest,
    publish,
)
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.compactor import Compactor
from mediasearch.vector_index.follower import GenerationFollower
from mediasearch.vector_index.generation import (
    Generation,
    GenerationRecord,
    balance,
    imbalance,
    load_generation,
    pack_regions,
    plan_nlist,
    train_generation,
)
from mediasearch.vector_index.merge import merge_topk
from mediasearch.vector_index.partition import HashPartitioner
from mediasearch.vector_index.rebalance import Rebalancer
from mediasearch.vector_index.router import LocalRouter
from mediasearch.vector_index.segment import INDEX_FILE, load_vectors, write_segment
from mediasearch.vector_index.shard import SearchParams, Shard
from mediasearch.vector_index.store import LocalFolderStore, MemoryStore, SegmentStore
from mediasearch.vector_index.writer import stage_segment
from tests.support.index import (
    MODEL,
    add_segment,
    brute_force,
    clustered,
    dispose,
    recall,
    sqlite_sessions,
    store_generation,
)

CONFIG = BuildConfig.defaults(encoding="SQ8")
DIM = 32
SHARDS = 4


def _data(n: int, nq: int = 0, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` index vectors and ``nq`` queries from the same 50 clusters (IVF at nprobe 1 finds
    about 40% of the true top 10 here, at nprobe 8 nearly all of it)."""
    pool = clustered(n + nq, DIM, clusters=50, spread=0.15, seed=seed)
    return pool[:n], pool[n:]


@pytest.fixture(scope="module")
def trained() -> tuple[Generation, np.ndarray, np.ndarray]:
    x, _ = _data(20_000)
    generation, lists = train_generation(x, number=1, num_shards=SHARDS, config=CONFIG)
    return generation, lists, x


def _stored(store: SegmentStore, generation: Generation, tmp: Path, vectors: int = 0) -> GenerationRecord:
    """The generation's artifact put in ``store``, and its record (what the rebalancer writes)."""
    segment_id = f"g{generation.number:06d}-test"
    meta = generation.write(tmp / segment_id, model_version=MODEL, segment_id=segment_id)
    uri = store.put(tmp / segment_id, meta)
    return GenerationRecord(
        generation.number, MODEL, generation.nlist, generation.num_shards, segment_id, uri, vectors,
        imbalance(generation.shard_sizes()),
    )  # fmt: skip


def _tiny_generation(owners: list[int]) -> Generation:
    """A hand-made generation over 4-dim one-hot centroids (list i is axis i), lists owned as given."""
    nlist = len(owners)
    template = faiss.index_factory(4, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(template).quantizer.add(np.eye(4, dtype=np.float32)[:nlist])
    return Generation(1, template, np.array(owners), np.ones(nlist))


# -- training, packing, routing ----------------------------------------------------------------
def test_plan_nlist_follows_sqrt_n_capped_by_training_vectors_with_lists_for_every_shard() -> None:
    assert plan_nlist(1_000_000, 4, CONFIG) == 4096  # 4 * sqrt(1M) = 4000, the nearest power of two
    assert plan_nlist(20_000, 4, CONFIG) == 256  # 512 would leave 39 of the 64 training vectors a list
    assert plan_nlist(2_000, 4, CONFIG) == 32  # 16 by the rules above; at least 8 lists per shard
    assert plan_nlist(1_000, 4, CONFIG) == 25  # ... but never fewer than 39 vectors a list


def test_training_places_each_vector_in_its_nearest_list_and_each_list_in_one_shard(
    trained: tuple[Generation, np.ndarray, np.ndarray],
) -> None:
    generation, lists, x = trained
    assert (generation.number, generation.nlist, generation.dim, generation.num_shards) == (1, 256, DIM, 4)
    assert generation.factory == "IVF256,SQ8@g1"
    centroids = generation.quantizer.reconstruct_n(0, generation.nlist)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-4)  # spherical k-means
    nearest = np.argmax(x @ centroids.T, axis=1)
    assert np.mean(lists == nearest) > 0.999
    np.testing.assert_array_equal(generation.sizes, np.bincount(lists, minlength=generation.nlist))
    # one owner per list, every shard owns lists, the shards' sizes are the vectors they hold
    assert generation.owners.shape == (generation.nlist,) and generation.owners.dtype == np.int64
    assert set(generation.owners.tolist()) == set(range(SHARDS))
    per_shard = np.bincount(generation.owners[lists], minlength=SHARDS)
    np.testing.assert_array_equal(generation.shard_sizes(), per_shard)
    assert per_shard.sum() == len(x)
    assert imbalance(per_shard) <= 1.05, per_shard


def test_balance_packs_the_largest_lists_first_onto_the_lightest_shard() -> None:
    sizes = np.array([7, 1, 1, 1, 1, 1, 1, 1])
    owners = balance(sizes, 2)
    np.testing.assert_array_equal(np.bincount(owners, weights=sizes), [7, 7])
    assert (owners[1:] != owners[0]).all()  # the big list is alone on its shard
    round_robin = np.bincount(np.arange(8) % 2, weights=sizes)
    assert imbalance(round_robin) > 1.4  # what the packing avoids: [10, 4]
    giant = np.array([100, 10, 10, 10, 10])  # a list larger than the mean: nothing else beside it
    np.testing.assert_array_equal(np.bincount(balance(giant, 2), weights=giant), [100, 40])


def test_balance_of_thousands_of_lists_is_within_five_percent_of_even() -> None:
    sizes = np.random.default_rng(3).lognormal(3.0, 1.0, 2000).astype(np.int64) + 1
    owners = balance(sizes, 8)
    assert owners.shape == (2000,) and set(owners.tolist()) == set(range(8))
    per_shard = np.bincount(owners, weights=sizes)
    assert imbalance(per_shard) <= 1.05, per_shard
    assert imbalance(np.bincount(np.arange(2000) % 8, weights=sizes)) > imbalance(per_shard)


def test_region_packing_keeps_neighbouring_lists_together_within_two_percent_of_even() -> None:
    """What makes a query call fewer shards: a list's nearest lists mostly share its shard."""
    rng = np.random.default_rng(4)
    centroids = clustered(512, d=16, clusters=12, spread=0.4, seed=4)  # lists of a clumpy collection
    sizes = rng.integers(50, 400, 512)
    _, near = faiss.knn(centroids, centroids, 9, metric=faiss.METRIC_INNER_PRODUCT)

    def shards_touched(owners: np.ndarray) -> float:  # distinct owners of each list's 9 nearest
        return float(np.mean([len(set(row)) for row in owners[near].tolist()]))

    regions, packed = pack_regions(centroids, sizes, 4, slack=0.02), balance(sizes, 4)
    assert imbalance(np.bincount(regions, weights=sizes, minlength=4)) <= 1.02 + sizes.max() / sizes.sum()
    assert shards_touched(regions) < 0.7 * shards_touched(packed), (
        shards_touched(regions),
        shards_touched(packed),
    )
    assert set(pack_regions(centroids[:20], sizes[:20], 4).tolist()) == {0, 1, 2, 3}  # few lists: LPT


def test_route_masks_lists_of_other_shards_and_names_only_shards_owning_a_probed_list() -> None:
    generation = _tiny_generation([0, 0, 1, 2])
    assert generation.num_shards == 3
    np.testing.assert_array_equal(generation.probe(np.array([[0.1, 0.0, 0.9, 0.3]], np.float32), 2), [[2, 3]])
    routed = generation.route(np.array([[0, 2], [1, 0]]))
    assert sorted(routed) == [0, 1]  # shard 2 owns neither list 0, 1 nor 2: not called
    np.testing.assert_array_equal(routed[0], [[0, -1], [1, 0]])
    np.testing.assert_array_equal(routed[1], [[-1, 2], [-1, -1]])


def test_route_of_probed_lists_covers_each_list_once_in_the_probe_shape(
    trained: tuple[Generation, np.ndarray, np.ndarray],
) -> None:
    generation, _, _ = trained
    _, q = _data(0, 50, seed=7)
    probed = generation.probe(q, 8)
    assert probed.shape == (50, 8) and probed.dtype == np.int64
    np.testing.assert_array_equal(probed[:, 0], generation.assign(q))  # nearest list first
    assert generation.probe(q, 10_000).shape == (50, generation.nlist)
    routed = generation.route(probed)
    assert set(routed) == set(generation.owners[probed].ravel().tolist())
    scanned = np.zeros(probed.shape, dtype=int)
    for shard, lists in routed.items():
        assert lists.shape == probed.shape
        mine = generation.owners[probed] == shard
        np.testing.assert_array_equal(lists[mine], probed[mine])
        assert (lists[~mine] == -1).all()
        scanned += lists >= 0
    assert (scanned == 1).all()  # every probed list is scanned by exactly one shard
    one = generation.route(generation.probe(q[:1], 1))
    assert list(one) == [int(generation.owners[generation.assign(q[:1])[0]])]


# -- the stored artifact -----------------------------------------------------------------------
def test_generation_artifact_round_trips_through_the_store(
    tmp_path: Path, trained: tuple[Generation, np.ndarray, np.ndarray]
) -> None:
    generation, _, x = trained
    store = MemoryStore(tmp_path / "cache")
    record = _stored(store, generation, tmp_path / "out", len(x))
    loaded = load_generation(store, record)
    assert (loaded.number, loaded.nlist, loaded.num_shards, loaded.dim) == (1, 256, SHARDS, DIM)
    np.testing.assert_array_equal(
        loaded.quantizer.reconstruct_n(0, loaded.nlist),
        generation.quantizer.reconstruct_n(0, generation.nlist),
    )
    np.testing.assert_array_equal(loaded.owners, generation.owners)
    np.testing.assert_array_equal(loaded.sizes, generation.sizes)
    assert (
        faiss.serialize_index(loaded.template).tobytes()
        == faiss.serialize_index(generation.template).tobytes()
    )
    assert loaded.factory == generation.factory
    assert not (tmp_path / "cache" / record.quantizer_id).exists()  # read whole, the local copy released


def test_a_corrupt_or_mismatched_generation_artifact_raises_corrupt_data(
    tmp_path: Path, trained: tuple[Generation, np.ndarray, np.ndarray]
) -> None:
    generation, _, x = trained
    store = LocalFolderStore(tmp_path / "store")
    record = _stored(store, generation, tmp_path / "out")
    with pytest.raises(CorruptData, match="holds generation 1, not 2"):
        load_generation(store, dataclasses.replace(record, number=2))
    segment = stage_segment(store, x[:50], np.arange(50), shard=0, model_version=MODEL, config=CONFIG)
    with pytest.raises(CorruptData, match="not a generation"):
        load_generation(store, GenerationRecord(1, MODEL, 256, 4, segment.segment_id, segment.uri, 50, 1.0))
    with pytest.raises(CorruptData, match="owners for"):
        Generation(1, generation.template, generation.owners[:-1], generation.sizes[:-1])
    (store.root / record.quantizer_id / INDEX_FILE).write_bytes(b"not a faiss index")
    with pytest.raises(CorruptData, match="checksum"):
        load_generation(store, record)
    with pytest.raises(CorruptData, match="cannot read the quantizer"):
        load_generation(store, record, verify_checksums=False)


# -- segments of a generation ------------------------------------------------------------------
def test_a_segment_of_a_generation_carries_no_quantizer_and_stores_ids_sorted(
    tmp_path: Path, trained: tuple[Generation, np.ndarray, np.ndarray]
) -> None:
    generation, lists, x = trained
    rows = np.random.default_rng(0).permutation(len(x))[:10]
    ids = rows * 7 + 3  # shuffled, not sorted
    meta = write_segment(
        tmp_path / "seg", x[rows], ids, shard=0, model_version=MODEL, config=CONFIG, generation=generation
    )
    assert (meta.generation, meta.index_type, meta.count) == (1, "IVF256,SQ8@g1", 10)
    quantizer_bytes = generation.nlist * DIM * 4
    assert len(faiss.serialize_index(generation.template)) > quantizer_bytes
    assert (tmp_path / "seg" / INDEX_FILE).stat().st_size < quantizer_bytes / 2  # no centroids inside
    index = faiss.read_index(str(tmp_path / "seg" / INDEX_FILE))
    ivf = faiss.extract_index_ivf(index)
    assert (ivf.nlist, ivf.quantizer.ntotal, index.ntotal) == (256, 0, 10)
    assert generation.quantizer.ntotal == generation.nlist  # the generation's own index is untouched
    invlists = ivf.invlists
    assert invlists is not None
    for lst in range(ivf.nlist):  # each vector's code in its nearest list, under its id
        size = invlists.list_size(lst)
        held = faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy() if size else np.empty(0)
        np.testing.assert_array_equal(np.sort(held), np.sort(ids[lists[rows] == lst]))
    stored_ids, stored_vectors = load_vectors(tmp_path / "seg")
    order = np.argsort(ids)
    np.testing.assert_array_equal(stored_ids, ids[order])
    np.testing.assert_array_equal(stored_vectors, x[rows][order])


def test_a_shard_of_a_generation_returns_exact_scores_and_never_a_deleted_id(tmp_path: Path) -> None:
    x, q = _data(6000, 30, seed=2)
    ids = np.arange(6000, dtype=np.int64) * 2 + 1
    store = MemoryStore(tmp_path / "cache")
    generation, record, lists = store_generation(store, x, config=CONFIG)
    parts = np.array_split(np.random.default_rng(1).permutation(len(x)), 3)  # three unsorted segments
    segments = tuple(
        stage_segment(
            store,
            x[p],
            ids[p],
            shard=0,
            model_version=MODEL,
            config=CONFIG,
            generation=generation,
            lists=lists[p],
        )
        for p in parts
    )
    deleted = ids[:: len(ids) // 40][:40]
    shard = Shard(0, store)
    shard.apply(ShardManifest(0, segments, np.sort(deleted), (1, len(deleted)), generation=record))
    assert shard.stats().index_generation == 1
    vector_of = dict(zip(ids.tolist(), x, strict=True))
    everything = SearchParams(k=10, nprobe=generation.nlist, ef_search=16)
    routed = generation.route(generation.probe(q, everything.nprobe))[0]
    scores, found = shard.search(q, everything, lists=routed, generation=1)
    assert (found >= 0).all()
    exact = np.array([[vector_of[i] @ query for i in row] for row, query in zip(found, q, strict=True)])
    np.testing.assert_allclose(scores, exact, atol=1e-5)  # re-ranked against the stored vectors
    assert (np.diff(scores, axis=1) <= 0).all()
    truth_scores, truth = brute_force(x, ids, q, 10, excluded=deleted)
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)  # every list scanned: the exact top 10
    assert recall(found, truth) >= 0.99
    # the deleted vectors themselves as queries: each would be its own first hit
    targets = np.searchsorted(ids, deleted)
    _, hits = shard.search(x[targets], SearchParams(k=20, nprobe=8, ef_search=16))
    assert not np.isin(hits, deleted).any() and (hits >= 0).all()
    _, alive = shard.search(x[targets + 1], SearchParams(k=1, nprobe=8, ef_search=16))
    np.testing.assert_array_equal(alive[:, 0], ids[targets + 1])  # their neighbours are found as usual


@pytest.mark.parametrize(
    "encoding",
    [
        "SQ8",
        "SQ4",
        "SQfp16",
        "Flat",
        "PQ16x4",
    ],
)
def test_a_shard_of_a_generation_answers_for_every_encoding_the_settings_allow(
    tmp_path: Path, encoding: str
) -> None:
    x, q = _data(3000, 20, seed=11)
    ids = np.arange(3000, dtype=np.int64)
    config = BuildConfig.defaults(encoding=encoding)
    store = MemoryStore(tmp_path / "cache")
    generation, record, lists = store_generation(store, x, config=config)
    segment = stage_segment(
        store, x, ids, shard=0, model_version=MODEL, config=config, generation=generation, lists=lists
    )
    shard = Shard(0, store)
    shard.apply(ShardManifest(0, (segment,), np.empty(0, np.int64), (0, 0), generation=record))
    # coarse codes (4-bit PQ) need a deeper candidate list than the default to re-rank from
    params = SearchParams(k=10, nprobe=8, ef_search=16, rerank=8 if encoding.startswith("PQ") else 2)
    scores, found = shard.search(q, params, lists=generation.probe(q, params.nprobe), generation=1)
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", x[found], q), atol=1e-5)
    assert recall(found, brute_force(x, ids, q, 10)[1]) >= 0.95


# -- a manifest with generations ---------------------------------------------------------------
@dataclass
class _Index:
    sessions: sessionmaker[Session]
    store: LocalFolderStore

    def shards(self) -> list[Shard]:
        out = []
        for s in range(SHARDS):
            shard = Shard(s, self.store)
            with self.sessions() as session:
                shard.apply(load_shard_manifest(session, s))
            out.append(shard)
        return out

    def generation(self) -> Generation:
        with self.sessions() as session:
            record = live_generation(session)
        assert record is not None
        return load_generation(self.store, record)

    def holders(self) -> dict[int, list[int]]:
        """Each id in a live segment and not tombstoned there -> the shards serving it."""
        out: dict[int, list[int]] = {}
        for s in range(SHARDS):
            with self.sessions() as session:
                manifest = load_shard_manifest(session, s)
            for record in manifest.segments:
                assert record.shard == s
                folder = self.store.open(record.uri)
                ids, _ = load_vectors(folder)
                self.store.release(record.uri, folder)
                for i in ids[~np.isin(ids, manifest.tombstones)].tolist():
                    out.setdefault(i, []).append(s)
        return out

    def image_shards(self) -> dict[int, int | None]:
        with self.sessions() as session:
            return {i: s for i, s in session.execute(select(ImageRow.id, ImageRow.shard))}


@pytest.fixture
def index(tmp_path: Path) -> Iterator[_Index]:
    sessions = sqlite_sessions(tmp_path)
    yield _Index(sessions, LocalFolderStore(tmp_path / "store"))
    dispose(sessions)


def _publish_hashed(index: _Index, x: np.ndarray, ids: np.ndarray) -> None:
    """Image rows and exact segments placed by id hash, as the indexer does before a generation."""
    owner = HashPartitioner(SHARDS).shards_for(ids)
    _add_images(index, ids, owner)
    for s in range(SHARDS):
        mine = owner == s
        if mine.any():
            add_segment(index.sessions, index.store, x[mine], ids[mine], shard=s, config=CONFIG)


def _publish_placed(index: _Index, generation: Generation, x: np.ndarray, ids: np.ndarray) -> None:
    """Image rows and segments placed by ``generation``, as the indexer does under one."""
    lists = generation.assign(x)
    owner = generation.owners[lists]
    _add_images(index, ids, owner)
    for s in np.unique(owner).tolist():
        mine = owner == s
        record = stage_segment(
            index.store, x[mine], ids[mine], shard=s, model_version=MODEL, config=CONFIG,
            generation=generation, lists=lists[mine],
        )  # fmt: skip
        publish(index.sessions, add=[record])


def _add_images(index: _Index, ids: np.ndarray, shards: np.ndarray) -> None:
    now = datetime.now(UTC)
    with index.sessions.begin() as session:
        session.add_all(
            ImageRow(
                id=int(i),
                bucket="b",
                key=f"k{i}",
                etag=f"e{i}",
                created=now,
                indexed=now,
                tags=[],
                status=INDEXED,
                model_version=MODEL,
                shard=int(s),
            )
            for i, s in zip(ids, shards, strict=True)
        )


def _rebalancer(index: _Index, num_shards: int = SHARDS, **options: Any) -> Rebalancer:
    return Rebalancer(index.sessions, index.store, CONFIG, num_shards, **({"min_vectors": 1000} | options))


def _route(shards: list[Shard], generation: Generation, q: np.ndarray, params: SearchParams) -> np.ndarray:
    """The ids a router that routes by ``generation`` returns."""

    async def run() -> np.ndarray:
        router = LocalRouter(shards, generations=lambda: generation, deadline_s=60)  # not a latency test
        try:
            return (await router.search(q, params)).ids
        finally:
            await router.close()

    return asyncio.run(run())


# -- recall through the router -----------------------------------------------------------------
def test_a_rebalanced_four_shard_index_reaches_recall_scanning_nprobe_lists_a_query(index: _Index) -> None:
    x, q = _data(20_000, 100, seed=4)
    ids = np.arange(20_000, dtype=np.int64) + 1
    _publish_hashed(index, x, ids)
    result = _rebalancer(index).run("test")
    assert (result.generation, result.vectors, result.nlist) == (1, 20_000, 256)
    shards = index.shards()
    follower = GenerationFollower(index.sessions, index.store)
    assert follower.sync_once() and not follower.sync_once()  # loaded once, then kept
    generation = follower.current()
    assert generation is not None and generation.number == 1
    truth = brute_force(x, ids, q, 10)[1]
    params = SearchParams(k=10, nprobe=8, ef_search=16)
    router = LocalRouter(shards, generations=follower.current)

    async def run() -> tuple[np.ndarray, np.ndarray]:
        try:
            narrow = await router.search(q, SearchParams(k=10, nprobe=1, ef_search=16))
            wide = await router.search(q, params)
            return narrow.ids, wide.ids
        finally:
            await router.close()

    narrow, wide = asyncio.run(run())
    assert recall(wide, truth) >= 0.95, recall(wide, truth)
    assert recall(narrow, truth) < 0.7, recall(narrow, truth)  # one list a query is not enough here
    counters = router.counters
    assert counters.queries == 2 * len(q)
    assert counters.lists_scanned == len(q) * (1 + params.nprobe)  # nprobe lists a query in all
    owners = generation.owners[generation.probe(q, params.nprobe)]
    expected_calls = len(q) + sum(len(set(row.tolist())) for row in owners)
    assert counters.shards_called == expected_calls <= len(q) * (1 + SHARDS)
    assert expected_calls < len(q) * (1 + SHARDS)  # some queries leave some shards alone
    # a shard asked without lists, or with another generation's, probes its own copy: same answer
    stale = np.zeros((len(q), params.nprobe), dtype=np.int64)  # list 0 of generation 7, say
    for lists, number in ((None, 0), (stale, 7)):
        parts = [shard.search(q, params, lists=lists, generation=number) for shard in shards]
        _, merged = merge_topk([p[0] for p in parts], [p[1] for p in parts], params.k)
        np.testing.assert_array_equal(merged, wide)


# -- rebalancing -------------------------------------------------------------------------------
def test_due_says_first_generation_then_imbalance_growth_and_shard_count(index: _Index) -> None:
    x, _ = _data(2400, seed=5)
    ids = np.arange(2400, dtype=np.int64) + 1
    assert _rebalancer(index).due() is None  # empty
    _publish_hashed(index, x[:900], ids[:900])
    assert _rebalancer(index).due() is None  # below index_generation_min
    _publish_hashed(index, x[900:1200], ids[900:1200])
    assert _rebalancer(index).due() == "first generation: 1200 vectors"
    assert _rebalancer(index).run("first").generation == 1
    assert _rebalancer(index).due() is None
    heavy = HashPartitioner(SHARDS).shards_for(ids[1200:]) == 0  # only shard 0 grows
    more = ids[1200:][heavy]
    add_segment(index.sessions, index.store, x[1200:][heavy], more, shard=0, config=CONFIG)
    reason = _rebalancer(index).due()
    assert reason is not None and reason.startswith("imbalance "), reason
    assert _rebalancer(index, max_imbalance=5.0).due() is None
    ratio = (1200 + len(more)) / 1200
    assert _rebalancer(index, growth=1.2).due() == f"grown {ratio:.1f}x since generation 1 was trained"
    assert _rebalancer(index, num_shards=6).due() == "shard count changed: 4 -> 6"


def test_a_second_run_makes_generation_2_live_and_retires_1_keeping_its_quantizer(index: _Index) -> None:
    x, q = _data(4000, 40, seed=6)
    ids = np.arange(4000, dtype=np.int64) + 1
    _publish_hashed(index, x[:3000], ids[:3000])
    first = _rebalancer(index).run("first")
    assert all(len(shards) == 1 for shards in index.holders().values())
    one = index.generation()
    _publish_placed(index, one, x[3000:], ids[3000:])
    with index.sessions() as session:
        before = {r.id for r in session.scalars(select(SegmentRow).where(SegmentRow.state == LIVE))}
        record_one = live_generation(session)
    second = _rebalancer(index).run("second")
    assert (first.generation, second.generation, second.vectors, second.retired) == (1, 2, 4000, len(before))
    with index.sessions() as session:
        rows = {r.number: r for r in session.scalars(select(GenerationRow))}
        segments = list(session.scalars(select(SegmentRow)))
        known = known_segment_ids(session)
    assert rows[1].state == RETIRED and rows[1].retired is not None and rows[2].state == LIVE
    live = [s for s in segments if s.state == LIVE]
    assert before <= {s.id for s in segments if s.state == RETIRED} and not before & {s.id for s in live}
    assert len(live) == second.segments and {s.generation for s in live} == {2}
    assert {s.index_type for s in live} == {f"IVF{second.nlist},SQ8@g2"}
    assert record_one is not None and record_one.quantizer_id in known
    assert load_generation(index.store, record_one).number == 1  # kept until garbage collection
    Compactor(index.sessions, index.store, CONFIG, gc_grace_s=3600).collect_garbage()
    assert load_generation(index.store, record_one).number == 1  # still within the grace period
    two = index.generation()
    # each id served by exactly one shard: the owner of its list; its image row points there
    holders = index.holders()
    assert sorted(holders) == ids.tolist()
    owner = dict(zip(ids.tolist(), two.owners[two.assign(x)].tolist(), strict=True))
    assert all(shards == [owner[i]] for i, shards in holders.items())
    assert index.image_shards() == owner
    assert imbalance(np.bincount(list(owner.values()), minlength=SHARDS)) <= 1.3
    found = _route(index.shards(), two, q, SearchParams(k=10, nprobe=8, ef_search=16))
    assert recall(found, brute_force(x, ids, q, 10)[1]) >= 0.95


def test_garbage_collection_deletes_a_retired_generations_quantizer_after_the_grace_period(
    index: _Index,
) -> None:
    x, _ = _data(2000, seed=8)
    ids = np.arange(2000, dtype=np.int64) + 1
    _publish_hashed(index, x, ids)
    _rebalancer(index).run("first")
    with index.sessions() as session:
        record_one = live_generation(session)
    _rebalancer(index).run("second")
    assert record_one is not None
    garbage = Compactor(index.sessions, index.store, CONFIG, gc_grace_s=0).collect_garbage()
    with index.sessions() as session:
        state = session.get(GenerationRow, 1)
    assert record_one.quantizer_id in garbage
    assert state is not None and state.state == "deleted"
    assert not (index.store.root / record_one.quantizer_id).exists()


@pytest.mark.parametrize("before", [0, 1], ids=["first-generation", "second-generation"])
def test_deletes_and_publishes_during_a_rebalance_are_placed_by_the_switch(
    index: _Index, monkeypatch: pytest.MonkeyPatch, before: int
) -> None:
    x, _ = _data(3400, seed=9)
    ids = np.arange(3400, dtype=np.int64) + 1
    base, extra = slice(0, 3000), slice(3000, 3400)
    _publish_hashed(index, x[base], ids[base])
    if before:
        _rebalancer(index).run("first")
    victim, late_victim = int(ids[17]), int(ids[3005])
    staged: list[int] = []
    original = Rebalancer._stage

    def stage_then_write_concurrently(
        self: Rebalancer, *args: object, **kwargs: object
    ) -> list[SegmentRecord]:
        out = original(self, *args, **kwargs)  # type: ignore[arg-type]
        staged.append(len(out))
        if len(staged) == 1:  # between the snapshot and the switch, in their own transactions:
            with index.sessions.begin() as session:  # a delete of a vector the rebalance placed,
                add_tombstones(session, [victim], shard=index.image_shards()[victim])
            if before:  # an indexer batch placed by the live generation,
                _publish_placed(index, index.generation(), x[extra], ids[extra])
            else:
                _publish_hashed(index, x[extra], ids[extra])
            with index.sessions.begin() as session:  # and a delete of one of its vectors
                add_tombstones(session, [late_victim], shard=index.image_shards()[late_victim])
        return out

    monkeypatch.setattr(Rebalancer, "_stage", stage_then_write_concurrently)
    result = _rebalancer(index).run("test")
    assert result.generation == before + 1 and result.caught_up == 399 and len(staged) == 2
    assert result.vectors == 3399  # the snapshot's 3000 and 399 caught up; the late victim is gone
    generation = index.generation()
    owner = dict(zip(ids.tolist(), generation.owners[generation.assign(x)].tolist(), strict=True))
    with index.sessions() as session:
        stones = [(i, s) for i, s in session.execute(select(TombstoneRow.image_id, TombstoneRow.shard))]
    assert stones == [(victim, owner[victim])]  # moved to the victim's new shard; the others applied
    holders = index.holders()
    expected = set(ids.tolist()) - {victim, late_victim}
    assert set(holders) == expected and all(holders[i] == [owner[i]] for i in expected)
    images = index.image_shards()
    assert all(images[i] == owner[i] for i in expected | {victim})
    queries = x[[17, 3005, *range(3010, 3400)]]  # the deleted vectors and the caught-up ones
    found = _route(index.shards(), generation, queries, SearchParams(k=5, nprobe=8, ef_search=16))
    assert not np.isin(found, [victim, late_victim]).any()
    np.testing.assert_array_equal(found[2:, 0], ids[3010:3400])  # caught-up vectors are served


def test_a_router_never_returns_an_id_twice_while_shards_serve_different_generations(index: _Index) -> None:
    """Shard servers apply a switch one after the other: for a moment a moved vector is in the old
    generation's segment on one shard and in the new one's on another."""
    x, _ = _data(4000, seed=10)
    ids = np.arange(4000, dtype=np.int64) + 1
    _publish_hashed(index, x[:2000], ids[:2000])
    _rebalancer(index).run("first")
    one = index.generation()
    _publish_placed(index, one, x[2000:], ids[2000:])
    shards = index.shards()  # all on generation 1
    _rebalancer(index).run("second")
    two = index.generation()
    with index.sessions() as session:  # half of them have applied the switch
        for shard in shards[:2]:
            shard.apply(load_shard_manifest(session, shard.shard_id))
    moved = np.flatnonzero(one.owners[one.assign(x)] != two.owners[two.assign(x)])
    assert len(moved) > 100
    for generation in (one, two):  # the router routes by the old generation or by the new one
        found = _route(shards, generation, x[moved], SearchParams(k=10, nprobe=8, ef_search=16))
        repeated = [row for row in found if len(set(row[row >= 0].tolist())) < (row >= 0).sum()]
        assert repeated == [], f"{len(repeated)} of {len(found)} answers hold an id twice"


def test_merging_one_query_ranks_like_merging_many() -> None:
    rng = np.random.default_rng(5)
    scores = [np.round(rng.random((3, 6)), 1).astype(np.float32) for _ in range(3)]  # ties on purpose
    ids = [rng.integers(-1, 12, (3, 6)) for _ in range(3)]  # repeats across sources, and gaps
    together = merge_topk(scores, ids, 8)
    for row in range(3):
        alone = merge_topk([s[row : row + 1] for s in scores], [i[row : row + 1] for i in ids], 8)
        np.testing.assert_array_equal(alone[1], together[1][row : row + 1])
        np.testing.assert_array_equal(alone[0], together[0][row : row + 1])
        kept = alone[1][alone[1] >= 0]
        assert len(set(kept.tolist())) == len(kept)  # each id once


def test_generation_list_shows_each_generation_with_its_model_width_and_state(
    index: _Index, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mediasearch.cli import main
    from mediasearch.metadata.segment_manifest import exact_layout, list_generations

    x, _ = _data(3_000, seed=6)
    _publish_hashed(index, x, np.arange(3_000, dtype=np.int64) + 1)
    with index.sessions() as session:
        assert list_generations(session) == [] and exact_layout(session) == {MODEL: 3_000}
    _rebalancer(index).run(MODEL)
    _rebalancer(index).run(MODEL)
    with index.sessions() as session:
        second, first = list_generations(session)
        assert exact_layout(session) == {}
    assert (second.number, second.state, second.dim, second.vectors) == (2, "live", DIM, 3_000)
    assert (first.number, first.state, first.dim) == (1, "retired", DIM)
    assert first.created is not None and first.retired is not None and second.retired is None
    url = index.sessions.kw["bind"].url.render_as_string(hide_password=False)
    assert main(["generation", "list", "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert "live" in out and "retired" in out and MODEL in out and str(DIM) in out and "3,000" in out
