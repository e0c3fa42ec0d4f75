"""The internal hops over TLS: gateway -> shard server (a real `mediasearch shard-server` serving
MEDIASEARCH_INTERNAL_TLS_CERT/KEY, the router trusting MEDIASEARCH_INTERNAL_TLS_CA) and
gateway/indexer -> Triton (a real tritonserver started with its own --grpc-use-ssl flags)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from mediasearch.dev.processes import Child, free_ports, mediasearch_command
from mediasearch.dev.triton import LocalTriton, TritonOptions
from mediasearch.encoders.triton import TritonClientOptions, TritonEncoder
from mediasearch.errors import Unavailable
from mediasearch.settings import Settings
from mediasearch.tls import internal_channel_credentials
from mediasearch.vector_index.router import GrpcRouter
from mediasearch.vector_index.shard import SearchParams
from mediasearch.vector_index.store import LocalFolderStore
from tests.support.certs import CA
from tests.support.index import add_segment, sqlite_sessions, unit_vectors


def _search(router: GrpcRouter, query: np.ndarray) -> np.ndarray:
    async def go() -> np.ndarray:
        try:
            return (
                await router.search(query, SearchParams(k=3, nprobe=8, ef_search=64), deadline_s=5.0)
            ).ids[0]
        finally:
            await router.close()

    return asyncio.run(go())


def test_the_router_reaches_a_tls_shard_server_only_over_tls(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    server = ca.issue("shard")
    sessions = sqlite_sessions(tmp_path)
    store = LocalFolderStore(tmp_path / "store")
    x, ids = unit_vectors(200, 16, seed=3), np.arange(200, dtype=np.int64)
    add_segment(sessions, store, x, ids)
    (port,) = free_ports(1)
    argv = mediasearch_command(
        "shard-server", shard=0, port=port, database_url=f"sqlite:///{tmp_path / 'meta.db'}",
        store_url=store.root.as_uri(), cache_dir=tmp_path / "cache", poll_interval=0.3,
    )  # fmt: skip
    env = {"MEDIASEARCH_INTERNAL_TLS_CERT": str(server.cert), "MEDIASEARCH_INTERNAL_TLS_KEY": str(server.key)}
    child = Child("shard", argv, env=env, log_path=tmp_path / "shard.log").start()
    try:
        child.wait_tcp(port, timeout_s=60)
        settings = Settings.defaults().with_overrides(internal_tls_ca=ca.path)
        credentials = internal_channel_credentials(settings)
        deadline = time.monotonic() + 30
        while True:  # until the shard has loaded its manifest
            try:
                found = _search(GrpcRouter([[f"localhost:{port}"]], credentials=credentials), x[7])
                break
            except Unavailable:
                assert time.monotonic() < deadline, child.log_tail()
                time.sleep(0.3)
        assert found[0] == 7
        with pytest.raises(Unavailable):
            _search(GrpcRouter([[f"localhost:{port}"]]), x[7])  # plaintext to a TLS port
    finally:
        child.stop()


def test_the_triton_encoder_speaks_tls_to_a_triton_started_with_grpc_use_ssl(
    tmp_path: Path, micro_repository: Path
) -> None:
    ca = CA(tmp_path / "pki")
    server = ca.issue("triton")
    options = TritonOptions(micro_repository, ort_threads=1, tls_cert=server.cert, tls_key=server.key)
    with LocalTriton(options) as triton:
        url = f"localhost:{triton.grpc_port}"

        async def encode(tls_ca: Path | None) -> np.ndarray:
            client = TritonClientOptions.defaults(url=url, tls_ca=tls_ca, retries=0, timeout_s=10)
            async with TritonEncoder(micro_repository, options=client) as encoder:
                return await encoder.encode_texts(["two red circles"])

        vectors = asyncio.run(encode(ca.path))
        assert vectors.shape[0] == 1 and np.isclose(np.linalg.norm(vectors[0]), 1.0, atol=1e-3)
        with pytest.raises(Unavailable):
            asyncio.run(encode(None))
