"""Real shard-server processes on free loopback ports, PostgreSQL manifest, router over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from mediasearch._proto.mediasearch.v1 import shard_pb2, shard_pb2_grpc
from mediasearch.dev.processes import Child, free_ports, mediasearch_command, stop_all
from mediasearch.errors import Unavailable
from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.metadata.segment_manifest import add_tombstones
from mediasearch.vector_index.partition import HashPartitioner
from mediasearch.vector_index.router import GrpcRouter, ShardStatus
from mediasearch.vector_index.shard import SearchParams
from mediasearch.vector_index.store import LocalFolderStore
from tests.support.index import add_segment, brute_force, sqlite_sessions, unit_vectors
from tests.support.postgres import Postgres

N, DIM = 3000, 32


@dataclass
class Cluster:
    sessions: sessionmaker[Session]
    store: LocalFolderStore
    vectors: np.ndarray
    ids: np.ndarray
    procs: dict[str, Child]
    addresses: dict[str, str]


def _shard_server(name: str, shard: int, port: int, url: str, store: Path, tmp: Path) -> Child:
    argv = mediasearch_command(
        "shard-server", shard=shard, port=port, database_url=url, store_url=store.as_uri(),
        cache_dir=tmp / "cache", poll_interval=0.3, workers=4,
    )  # fmt: skip
    return Child(name, argv, log_path=tmp / f"{name}.log")


@contextlib.contextmanager
def _restarted_afterwards(child: Child, port: int) -> Iterator[None]:
    """Put a server a test stops back as it was, so the module's tests do not depend on order."""
    try:
        yield
    finally:
        child.start().wait_serving(port, timeout_s=60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    with postgres() as url:
        engine = make_engine(url)
        migrate(engine)
        sessions = session_factory(engine)
        store = LocalFolderStore(tmp / "store")
        x, ids = unit_vectors(N, DIM, seed=1), np.arange(N, dtype=np.int64)
        owner = HashPartitioner(2).shards_for(ids)
        for shard in (0, 1):
            mine = np.flatnonzero(owner == shard)
            for part in np.array_split(mine, 2):
                add_segment(sessions, store, x[part], ids[part], shard=shard)
        ports = dict(zip(("s0a", "s0b", "s1"), free_ports(3), strict=True))
        procs = {
            name: _shard_server(name, int(name[1]), ports[name], url, store.root, tmp).start()
            for name in ports
        }
        try:
            for name, child in procs.items():
                child.wait_serving(ports[name], timeout_s=60)
            addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
            yield Cluster(sessions, store, x, ids, procs, addresses)
        finally:
            stop_all(list(procs.values()), timeout_s=10)
            engine.dispose()


def _router(c: Cluster, **kwargs: object) -> GrpcRouter:
    a = c.addresses
    return GrpcRouter([[a["s0a"], a["s0b"]], [a["s1"]]], **kwargs)  # type: ignore[arg-type]


def _search(c: Cluster, q: np.ndarray, k: int = 10, **kwargs: object):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        router = _router(c, **kwargs)
        try:
            return await router.search(q, SearchParams.defaults(k=k), deadline_s=2.0)
        finally:
            await router.close()

    return asyncio.run(go())


async def _stats(c: Cluster) -> list[ShardStatus]:
    router = _router(c)
    try:
        return await router.stats()
    finally:
        await router.close()


def test_router_over_shard_servers_returns_the_global_brute_force_top_k(cluster: Cluster) -> None:
    q = unit_vectors(8, DIM, seed=2)
    result = _search(cluster, q)
    assert not result.partial
    np.testing.assert_array_equal(result.ids, brute_force(cluster.vectors, cluster.ids, q, 10)[1])


def test_stats_report_the_segments_each_server_loaded(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.addresses["s1"]) as channel:
        stats = shard_pb2_grpc.ShardServiceStub(channel).Stats(shard_pb2.ShardStatsRequest(), timeout=2)
    assert stats.shard == 1 and len(stats.segment_ids) == 2
    assert stats.vectors == int((HashPartitioner(2).shards_for(cluster.ids) == 1).sum())


def test_newly_published_segment_and_tombstone_are_served_within_two_seconds(cluster: Cluster) -> None:
    new_x, new_ids = unit_vectors(50, DIM, seed=3), np.arange(10_000, 10_050, dtype=np.int64)
    published = time.monotonic()
    add_segment(cluster.sessions, cluster.store, new_x, new_ids, shard=1)
    while (found := _search(cluster, new_x[:1], k=1).ids[0, 0]) != 10_000:
        assert time.monotonic() - published < 2.0, f"still {found}"
        time.sleep(0.05)
    with cluster.sessions.begin() as s:
        add_tombstones(s, [10_000], shard=None)
    deleted = time.monotonic()
    while _search(cluster, new_x[:1], k=1).ids[0, 0] == 10_000:
        assert time.monotonic() - deleted < 2.0
        time.sleep(0.05)


def test_search_survives_one_replica_of_a_shard_being_stopped(cluster: Cluster) -> None:
    child = cluster.procs["s0a"]
    with _restarted_afterwards(child, int(cluster.addresses["s0a"].rsplit(":", 1)[1])):
        assert child.stop(timeout_s=10) == 0
        q = unit_vectors(4, DIM, seed=4)
        for _ in range(3):  # every rotation of the replica order
            result = _search(cluster, q)
            assert not result.partial and (result.ids >= 0).all()


def test_search_returns_partial_when_one_shard_server_process_is_down(cluster: Cluster) -> None:
    child = cluster.procs["s1"]
    with _restarted_afterwards(child, int(cluster.addresses["s1"].rsplit(":", 1)[1])):
        child.kill()
        assert child.wait(timeout_s=10) == -signal.SIGKILL
        q = unit_vectors(4, DIM, seed=5)
        result = _search(cluster, q, allow_partial=True)
        assert result.partial and result.missing_shards == (1,)
        shard0 = cluster.ids[HashPartitioner(2).shards_for(cluster.ids) == 0]
        assert np.isin(result.ids, shard0).all()
        with pytest.raises(Unavailable, match=r"\[1\]"):
            _search(cluster, q)
        stats = asyncio.run(_stats(cluster))
        assert [(s.shard, s.available) for s in stats] == [(0, True), (1, False)]
        assert stats[0].vectors == len(shard0) and stats[0].segments == 2


def test_a_shard_server_refuses_searches_until_it_has_loaded_its_shard(tmp_path: Path) -> None:
    """Before its first manifest sync a replica holds nothing: answering would hand the router an
    empty shard (no error, no partial flag); UNAVAILABLE makes the router ask the next replica."""
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    x = unit_vectors(50, DIM, seed=9)
    add_segment(sessions, store, x, np.arange(50, dtype=np.int64))
    aside = tmp_path / "store-aside"
    store.root.rename(aside)  # the segment's files are not there yet: the first sync fails
    (port,) = free_ports(1)
    argv = mediasearch_command(
        "shard-server", shard=0, port=port, database_url=f"sqlite:///{tmp_path / 'meta.db'}",
        store_url=store.root.as_uri(), cache_dir=tmp_path / "cache", poll_interval=0.3,
    )  # fmt: skip
    request = shard_pb2.ShardSearchRequest(queries=x[4].astype("<f4").tobytes(), dim=DIM, k=1)
    with (
        Child("shard", argv, log_path=tmp_path / "shard.log") as child,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = shard_pb2_grpc.ShardServiceStub(channel)
        child.wait_tcp(port, timeout_s=60)
        time.sleep(1.0)  # a few failed syncs
        with pytest.raises(grpc.RpcError) as refused:
            stub.Search(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, child.log_tail()
        aside.rename(store.root)
        child.wait_serving(port, timeout_s=30)
        assert list(stub.Search(request, timeout=5).results[0].ids) == [4]
