"""Router: partitioning, fan-out, global top-k merge, deadlines, partial results (in-process)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from mediasearch.errors import ConfigError, InvalidInput, Unavailable
from mediasearch.metadata.segment_manifest import ShardManifest
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.partition import DateBucketPartitioner, HashPartitioner, make_partitioner
from mediasearch.vector_index.router import LocalRouter
from mediasearch.vector_index.shard import SearchParams, Shard
from mediasearch.vector_index.store import MemoryStore
from mediasearch.vector_index.writer import stage_segment
from tests.support.index import MODEL, brute_force, unit_vectors


class _DownShard(Shard):
    def search(self, *args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        raise Unavailable("shard process is gone")


class _StuckShard(Shard):
    """Answers only once ``released`` is set (or after a minute): far past any deadline."""

    released = threading.Event()

    def search(self, *args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        self.released.wait(60)
        return super().search(*args, **kwargs)  # type: ignore[arg-type]


def _shards(
    tmp_path: Path, x: np.ndarray, ids: np.ndarray, n: int, kinds: dict[int, type[Shard]]
) -> list[Shard]:
    store = MemoryStore(tmp_path)
    owner = HashPartitioner(n).shards_for(ids)
    shards = []
    for s in range(n):
        mine = owner == s
        rec = stage_segment(
            store, x[mine], ids[mine], shard=s, model_version=MODEL, config=BuildConfig.defaults()
        )
        shard = kinds.get(s, Shard)(s, store)
        shard.apply(ShardManifest(s, (rec,), np.empty(0, np.int64), (0, 0)))
        shards.append(shard)
    return shards


def test_hash_partitioner_is_deterministic_and_roughly_even() -> None:
    ids = np.arange(100_000, dtype=np.int64)
    owner = HashPartitioner(4).shards_for(ids)
    np.testing.assert_array_equal(owner, HashPartitioner(4).shards_for(ids))
    counts = np.bincount(owner, minlength=4)
    assert counts.min() > 0.97 * 25_000 and HashPartitioner(4).shard_for(12345) == owner[12345]


def test_date_partitioner_keeps_one_bucket_on_one_shard() -> None:
    p = make_partitioner("date:7", 3)
    assert isinstance(p, DateBucketPartitioner)
    day = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
    owner = p.shards_for(np.arange(3), np.array([day, day + 3600, day + 8 * 86400]))
    assert owner[0] == owner[1] != owner[2]
    with pytest.raises(InvalidInput):
        p.shards_for(np.arange(3))
    with pytest.raises(ConfigError):
        make_partitioner("random", 3)


def test_local_router_returns_the_global_brute_force_top_k(tmp_path: Path) -> None:
    x, q = unit_vectors(2000, seed=1), unit_vectors(10, seed=2)
    ids = np.arange(2000, dtype=np.int64) * 3
    router = LocalRouter(_shards(tmp_path, x, ids, 4, {}))
    result = asyncio.run(router.search(q, SearchParams.defaults(k=10)))
    assert not result.partial
    np.testing.assert_array_equal(result.ids, brute_force(x, ids, q, 10)[1])


def test_router_raises_unavailable_when_a_shard_is_down_and_partial_is_off(tmp_path: Path) -> None:
    x, ids = unit_vectors(400), np.arange(400, dtype=np.int64)
    router = LocalRouter(_shards(tmp_path, x, ids, 3, {1: _DownShard}))
    with pytest.raises(Unavailable, match=r"\[1\]"):
        asyncio.run(router.search(x[:2], SearchParams.defaults(k=5)))


def test_router_returns_partial_results_flagged_when_a_shard_is_down_and_partial_is_on(
    tmp_path: Path,
) -> None:
    x, ids = unit_vectors(400), np.arange(400, dtype=np.int64)
    router = LocalRouter(_shards(tmp_path, x, ids, 3, {1: _DownShard}), allow_partial=True)
    result = asyncio.run(router.search(x[:2], SearchParams.defaults(k=5)))
    assert result.partial and result.missing_shards == (1,)
    assert not np.isin(result.ids, ids[HashPartitioner(3).shards_for(ids) == 1]).any()


def test_router_answers_at_its_deadline_without_a_shard_that_does_not(tmp_path: Path) -> None:
    x, ids = unit_vectors(400), np.arange(400, dtype=np.int64)
    router = LocalRouter(_shards(tmp_path, x, ids, 2, {0: _StuckShard}), allow_partial=True)

    async def search() -> object:  # the stuck shard answers after a minute; the deadline is 0.2 s
        try:
            return await asyncio.wait_for(
                router.search(x[:1], SearchParams.defaults(k=5), deadline_s=0.2), 30
            )
        finally:
            _StuckShard.released.set()  # lets its worker thread finish, which asyncio.run waits for

    _StuckShard.released.clear()
    result = asyncio.run(search())
    assert result.missing_shards == (0,)  # type: ignore[attr-defined]
    assert np.isin(result.ids[result.ids >= 0], ids[HashPartitioner(2).shards_for(ids) == 1]).all()  # type: ignore[attr-defined]


def test_concurrent_searches_are_coalesced_into_shared_fan_outs_with_the_same_answers(tmp_path: Path) -> None:
    x, q = unit_vectors(1000, seed=3), unit_vectors(40, seed=4)
    ids = np.arange(1000, dtype=np.int64)
    shards = _shards(tmp_path, x, ids, 2, {})
    calls: list[int] = []
    for shard in shards:
        original = shard.search

        def counted(queries, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(len(queries))
            return _original(queries, *args, **kwargs)

        shard.search = counted  # type: ignore[method-assign]
    router = LocalRouter(shards)

    async def many() -> list[np.ndarray]:
        results = await asyncio.gather(
            *(router.search(row[None, :], SearchParams.defaults(k=5)) for row in q)
        )
        return [r.ids[0] for r in results]

    found = np.array(asyncio.run(many()))
    np.testing.assert_array_equal(found, brute_force(x, ids, q, 5)[1])
    assert sum(calls) == 2 * len(q) and len(calls) < 2 * len(q)  # fewer, larger shard calls


def test_router_factory_picks_grpc_when_addresses_are_configured_else_in_process(tmp_path: Path) -> None:
    from mediasearch.settings import load_settings
    from mediasearch.vector_index.router import GrpcRouter, make_router

    grpc_router = make_router(load_settings(shard_addresses=("a:1|b:1", "c:2")))
    assert isinstance(grpc_router, GrpcRouter) and grpc_router.replicas == [["a:1", "b:1"], ["c:2"]]
    shards = _shards(tmp_path, unit_vectors(50), np.arange(50), 1, {})
    assert isinstance(make_router(load_settings(), shards), LocalRouter)
    with pytest.raises(ConfigError):
        make_router(load_settings())


def test_concurrent_searches_with_different_parameters_never_share_a_fan_out(tmp_path: Path) -> None:
    x, q = unit_vectors(500, seed=5), unit_vectors(12, seed=6)
    ids = np.arange(500, dtype=np.int64)
    router = LocalRouter(_shards(tmp_path, x, ids, 2, {}))

    async def many() -> list[object]:
        calls = [router.search(row[None, :], SearchParams.defaults(k=3 + i % 3)) for i, row in enumerate(q)]
        calls.append(router.search(q, SearchParams.defaults(k=4)))  # a 12-row search among the single rows
        try:
            return list(await asyncio.gather(*calls))
        finally:
            await router.close()

    results = asyncio.run(many())
    for i, row in enumerate(q):
        k = 3 + i % 3
        assert results[i].ids.shape == (1, k)  # type: ignore[attr-defined]
        np.testing.assert_array_equal(results[i].ids[0], brute_force(x, ids, row[None, :], k)[1][0])  # type: ignore[attr-defined]
    np.testing.assert_array_equal(results[-1].ids, brute_force(x, ids, q, 4)[1])  # type: ignore[attr-defined]


def test_an_in_process_router_reports_each_shards_vectors_and_segments(tmp_path: Path) -> None:
    x, ids = unit_vectors(300), np.arange(300, dtype=np.int64)
    router = LocalRouter(_shards(tmp_path, x, ids, 3, {}))
    stats = asyncio.run(router.stats())
    owners = HashPartitioner(3).shards_for(ids)
    assert [(s.shard, s.vectors, s.segments, s.available) for s in stats] == [
        (shard, int((owners == shard).sum()), 1, True) for shard in range(3)
    ]
