"""Real shard-server processes on free loopback ports, PostgreSQL manifest, router over gRPC."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from index_support import add_segment, brute_force, postgres_available, postgres_database, unit_vectors
from sqlalchemy.orm import Session, sessionmaker

from mediasearch._proto.mediasearch.v1 import shard_pb2, shard_pb2_grpc
from mediasearch.errors import Unavailable
from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.metadata.segment_manifest import add_tombstones
from mediasearch.vector_index.partition import HashPartitioner
from mediasearch.vector_index.router import GrpcRouter
from mediasearch.vector_index.shard import SearchParams
from mediasearch.vector_index.store import LocalFolderStore

N, DIM = 3000, 32


@dataclass
class Cluster:
    sessions: sessionmaker[Session]
    store: LocalFolderStore
    vectors: np.ndarray
    ids: np.ndarray
    procs: dict[str, subprocess.Popen[bytes]]
    addresses: dict[str, str]


def _start(name: str, shard: int, url: str, store: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    port_file = tmp / f"{name}.port"
    cmd = [sys.executable, "-m", "mediasearch.cli", "shard-server", "--shard", str(shard), "--port", "0",
           "--port-file", str(port_file), "--database-url", url, "--store-url", store.as_uri(),
           "--cache-dir", str(tmp / "cache"), "--poll-interval", "0.3", "--workers", "4"]  # fmt: skip
    log = (tmp / f"{name}.log").open("wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), port_file


def _wait_serving(address: str, deadline: float) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{address} never became SERVING")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432 (.ci/run starts it)")
    tmp = tmp_path_factory.mktemp("cluster")
    with postgres_database() as url:
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
        started = {name: _start(name, shard, url, store.root, tmp) for name, shard in
                   (("s0a", 0), ("s0b", 0), ("s1", 1))}  # fmt: skip
        procs = {name: p for name, (p, _) in started.items()}
        try:
            deadline = time.monotonic() + 60
            addresses = {}
            for name, (proc, port_file) in started.items():
                while not port_file.exists() or not port_file.read_text():
                    assert proc.poll() is None, (tmp / f"{name}.log").read_text()
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                addresses[name] = f"127.0.0.1:{port_file.read_text()}"
                _wait_serving(addresses[name], deadline)
            yield Cluster(sessions, store, x, ids, procs, addresses)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            engine.dispose()


def _router(c: Cluster, **kwargs: object) -> GrpcRouter:
    a = c.addresses
    return GrpcRouter([[a["s0a"], a["s0b"]], [a["s1"]]], **kwargs)  # type: ignore[arg-type]


def _search(c: Cluster, q: np.ndarray, k: int = 10, **kwargs: object):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        router = _router(c, **kwargs)
        try:
            return await router.search(q, SearchParams(k=k), deadline_s=2.0)
        finally:
            await router.close()

    return asyncio.run(go())


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
    proc = cluster.procs["s0a"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    q = unit_vectors(4, DIM, seed=4)
    for _ in range(3):  # every rotation of the replica order
        result = _search(cluster, q)
        assert not result.partial and (result.ids >= 0).all()


def test_search_returns_partial_when_one_shard_server_process_is_down(cluster: Cluster) -> None:
    proc = cluster.procs["s1"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    q = unit_vectors(4, DIM, seed=5)
    result = _search(cluster, q, allow_partial=True)
    assert result.partial and result.missing_shards == (1,)
    shard0 = cluster.ids[HashPartitioner(2).shards_for(cluster.ids) == 0]
    assert np.isin(result.ids, shard0).all()
    with pytest.raises(Unavailable, match=r"\[1\]"):
        _search(cluster, q)
