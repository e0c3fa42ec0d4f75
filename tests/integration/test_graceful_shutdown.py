"""SIGTERM as Kubernetes sends it: a server reports not-ready at once, keeps answering for
MEDIASEARCH_SHUTDOWN_DELAY_S (endpoints catch up), then refuses new calls and exits within the grace."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mediasearch._proto.mediasearch.v1 import shard_pb2, shard_pb2_grpc
from mediasearch.client import SearchClient
from mediasearch.dev.processes import Child, free_ports, mediasearch_command, start_gateway
from mediasearch.errors import Unavailable
from mediasearch.vector_index.store import LocalFolderStore
from tests.support.index import add_segment, sqlite_sessions, unit_vectors

DELAY_S, GRACE_S = 2.0, 5.0
ENV = {"MEDIASEARCH_SHUTDOWN_DELAY_S": str(DELAY_S), "MEDIASEARCH_SHUTDOWN_GRACE_S": str(GRACE_S)}


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return int(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        )


def _drains(child: Child, address: str, still_answers: object) -> None:
    assert _health(address) == health_pb2.HealthCheckResponse.SERVING
    asked = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    deadline = asked + 1.0
    while _health(address) != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "still ready after SIGTERM"
        time.sleep(0.05)
    still_answers()  # type: ignore[operator]  # within the delay: calls are still served
    assert time.monotonic() - asked < DELAY_S
    code = child.wait(timeout_s=DELAY_S + GRACE_S + 10)
    took = time.monotonic() - asked
    assert code == 0 and DELAY_S <= took < DELAY_S + GRACE_S + 5, (code, took)


def test_the_gateway_reports_not_ready_keeps_serving_for_the_delay_then_exits(
    tmp_path: Path, micro_repository: Path
) -> None:
    env = {
        **ENV,
        "MEDIASEARCH_DATABASE_URL": f"sqlite:///{tmp_path / 'meta.db'}",
        "MEDIASEARCH_MODEL_REPOSITORY": str(micro_repository),
        "MEDIASEARCH_SEGMENT_STORE_URL": (tmp_path / "segments").as_uri(),
        "MEDIASEARCH_SEGMENT_CACHE_DIR": str(tmp_path / "cache"),
    }
    child, port, _ = start_gateway("gateway", env, tmp_path)
    try:
        address = f"127.0.0.1:{port}"
        with SearchClient(address, timeout_s=5) as client:
            client.search_text("a red circle")
            _drains(child, address, lambda: client.search_text("a blue square"))
        try:
            with SearchClient(address, timeout_s=2) as late:
                late.search_text("too late")
            raise AssertionError("a call after the exit was answered")
        except Unavailable:
            pass
    finally:
        child.stop()


def test_a_shard_server_reports_not_ready_keeps_serving_for_the_delay_then_exits(tmp_path: Path) -> None:
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    x = unit_vectors(100, 16, seed=5)
    add_segment(sessions, store, x, np.arange(100, dtype=np.int64))
    (port,) = free_ports(1)
    argv = mediasearch_command(
        "shard-server", shard=0, port=port, database_url=f"sqlite:///{tmp_path / 'meta.db'}",
        store_url=store.root.as_uri(), cache_dir=tmp_path / "cache", poll_interval=0.3,
    )  # fmt: skip
    child = Child("shard", argv, env=ENV, log_path=tmp_path / "shard.log").start()
    address = f"127.0.0.1:{port}"

    def search() -> None:
        with grpc.insecure_channel(address) as channel:
            request = shard_pb2.ShardSearchRequest(queries=x[3].astype("<f4").tobytes(), dim=16, k=1)
            (hits,) = shard_pb2_grpc.ShardServiceStub(channel).Search(request, timeout=5).results
            assert list(hits.ids) == [3]

    try:
        child.wait_serving(port, timeout_s=60)
        search()
        _drains(child, address, search)
    finally:
        child.stop()


def test_a_shard_server_signalled_again_and_again_while_it_stops_still_exits_once_and_cleanly(
    tmp_path: Path,
) -> None:
    """A process that dies with its supervisor (PR_SET_PDEATHSIG) gets a SIGTERM each time the kernel
    hands it to another thread of the dying supervisor. A handler that ran the stop itself ran again
    inside that stop and hung it; the signals now only ask once."""
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    add_segment(sessions, store, unit_vectors(50, 16, seed=6), np.arange(50, dtype=np.int64))
    (port,) = free_ports(1)
    argv = mediasearch_command(
        "shard-server", shard=0, port=port, database_url=f"sqlite:///{tmp_path / 'meta.db'}",
        store_url=store.root.as_uri(), cache_dir=tmp_path / "cache", poll_interval=0.3,
    )  # fmt: skip
    env = {"MEDIASEARCH_SHUTDOWN_DELAY_S": "0", "MEDIASEARCH_SHUTDOWN_GRACE_S": "2"}
    child = Child("shard", argv, env=env, log_path=tmp_path / "shard.log").start()
    try:
        child.wait_serving(port, timeout_s=60)
        asked = time.monotonic()
        for _ in range(100):  # a burst over the whole stop, 10 ms apart
            if not child.running():
                break
            child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            time.sleep(0.01)
        code = child.wait(timeout_s=20)
        assert code == 0, child.log_tail()
        assert time.monotonic() - asked < 10
        assert child.log_tail().count("stopping (SIGTERM)") == 1
    finally:
        child.stop()
