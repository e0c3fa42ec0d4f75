"""The shard server: serves one shard's live segments over gRPC and follows the manifest.

Sync gRPC with a thread pool rather than grpc.aio: a Search is ~1 ms of FAISS work that releases
the GIL, so handler threads run searches truly in parallel, while on grpc.aio every search would
have to be pushed to a thread pool anyway (blocking the event loop otherwise) for the same result
with more moving parts. The pool bounds concurrency; OpenMP inside FAISS is set to one thread per
search so N concurrent requests use N cores instead of oversubscribing them.

Health (grpc.health.v1) reports NOT_SERVING until the first manifest sync has loaded the shard,
so a Kubernetes readiness probe keeps traffic away from a replica that is still starting; a Search
that reaches it anyway (the gateway's router does not watch health) is refused with UNAVAILABLE, so
the router asks the shard's next replica instead of taking an empty answer for the whole shard.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mediasearch._proto.mediasearch.v1 import shard_pb2, shard_pb2_grpc
from mediasearch.errors import InvalidInput, Unavailable
from mediasearch.metadata.db import migrated_engine, session_factory
from mediasearch.rpc import ErrorInterceptor
from mediasearch.settings import Settings
from mediasearch.signals import StopSignals
from mediasearch.tls import internal_server_credentials
from mediasearch.vector_index.follower import ManifestFollower
from mediasearch.vector_index.shard import SearchParams, Shard
from mediasearch.vector_index.store import store_from_settings

log = logging.getLogger(__name__)
SERVICE_NAME = "mediasearch.v1.ShardService"
DEFAULTS = Settings.defaults()


class ShardServicer(shard_pb2_grpc.ShardServiceServicer):
    """Search and Stats over one :class:`Shard`."""

    def __init__(self, shard: Shard, defaults: SearchParams) -> None:
        self.shard = shard
        self.defaults = defaults
        self.loaded = threading.Event()  # set by the first manifest sync that succeeded

    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not self.loaded.is_set():
            raise Unavailable(f"shard {self.shard.shard_id} has not loaded its segments yet")
        queries = _decode_queries(request.queries, request.dim)
        params = SearchParams(
            k=request.k or self.defaults.k,
            nprobe=request.nprobe or self.defaults.nprobe,
            ef_search=request.ef_search or self.defaults.ef_search,
            rerank=request.rerank or self.defaults.rerank,
        )
        lists = _decode_lists(request.lists, len(queries))
        scores, ids = self.shard.search(
            queries, params, request.model_version, lists=lists, generation=request.index_generation
        )
        results = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            keep = row_ids >= 0
            results.append(shard_pb2.Hits(ids=row_ids[keep].tolist(), scores=row_scores[keep].tolist()))
        view = self.shard.view
        return shard_pb2.ShardSearchResponse(
            results=results,
            shard=self.shard.shard_id,
            generation=view.generation,
            index_generation=view.quantizer.number if view.quantizer is not None else 0,
        )

    def Stats(self, request: Any, context: grpc.ServicerContext) -> Any:
        s = self.shard.stats()
        return shard_pb2.ShardStatsResponse(
            shard=s.shard,
            vectors=s.vectors,
            segment_ids=list(s.segments),
            tombstones=s.tombstones,
            generation=s.generation,
            model_versions=list(s.model_versions),
            last_sync_unix=s.last_sync,
            index_generation=s.index_generation,
        )


def _decode_lists(raw: bytes, nq: int) -> np.ndarray | None:
    if not raw:
        return None
    if len(raw) % (4 * nq):
        raise InvalidInput(f"lists: {len(raw)} bytes is not {nq} rows of int32 list ids")
    return np.frombuffer(raw, dtype="<i4").reshape(nq, -1).astype(np.int64)


def _decode_queries(raw: bytes, dim: int) -> np.ndarray:
    if dim <= 0 or len(raw) == 0 or len(raw) % (4 * dim):
        raise InvalidInput(f"queries: {len(raw)} bytes is not a whole number of {dim}-dim float32 rows")
    return np.frombuffer(raw, dtype="<f4").reshape(-1, dim)


@dataclass
class ShardServer:
    """A running shard server: gRPC server + manifest follower. ``port=0`` picks a free port."""

    shard: Shard
    follower: ManifestFollower
    defaults: SearchParams  # what a request that leaves k, nprobe or ef_search at 0 gets
    host: str = DEFAULTS.shard_host
    port: int = 0
    workers: int = DEFAULTS.shard_workers
    omp_threads: int = 1
    credentials: grpc.ServerCredentials | None = None  # TLS (MEDIASEARCH_INTERNAL_TLS_CERT/KEY)
    _server: grpc.Server | None = None
    _servicer: ShardServicer | None = None
    _health: health.HealthServicer | None = None

    def start(self) -> int:
        """Start serving; returns the bound port."""
        faiss.omp_set_num_threads(self.omp_threads)
        server = grpc.server(
            # OpenMP's thread count is per thread: set it in every worker, not only here. Left at the
            # default, each search of each shard server on the node spins up all cores' threads.
            futures.ThreadPoolExecutor(
                max_workers=self.workers,
                thread_name_prefix="search",
                initializer=faiss.omp_set_num_threads,
                initargs=(self.omp_threads,),
            ),
            interceptors=[ErrorInterceptor()],
            options=[
                # a request is nq x dim float32 queries (the router coalesces concurrent searches:
                # 32 at 512 dims are 64 kB), a response nq x k ids and scores: 4 MiB in is plenty
                ("grpc.max_receive_message_length", 4 << 20),
                ("grpc.max_send_message_length", 16 << 20),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._servicer = ShardServicer(self.shard, self.defaults)
        shard_pb2_grpc.add_ShardServiceServicer_to_server(self._servicer, server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self.host}:{self.port}"
        if self.credentials is not None:
            self.port = server.add_secure_port(address, self.credentials)
        else:
            self.port = server.add_insecure_port(address)
        server.start()
        self._server = server
        self.follower.on_sync = self._on_sync
        self.follower.start()
        log.info("shard %d serving on %s:%d", self.shard.shard_id, self.host, self.port)
        return self.port

    def _on_sync(self, ok: bool) -> None:
        if ok:
            assert self._servicer is not None
            self._servicer.loaded.set()
            self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def _set_health(self, status: int) -> None:
        assert self._health is not None
        for name in ("", SERVICE_NAME):
            self._health.set(name, status)

    def stop(self, grace: float = 2.0, delay_s: float = 0.0) -> None:
        """Report NOT_SERVING while still serving for ``delay_s``, then refuse new calls, let
        in-flight ones finish (up to ``grace`` s), stop following."""
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        if delay_s > 0 and self._server is not None:
            log.info("shard %d: not ready; serving %.1f s more", self.shard.shard_id, delay_s)
            time.sleep(delay_s)
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        self.follower.stop()
        self.shard.close()


def serve_shard(
    settings: Settings,
    shard_id: int,
    *,
    model_version: str | None = None,
    listen: bool = True,
    port_file: Path | None = None,
) -> None:
    """``mediasearch shard-server``: serve shard ``shard_id`` on ``MEDIASEARCH_SHARD_HOST``:``_PORT``
    until SIGTERM or SIGINT. Migrates the database, follows the manifest (LISTEN/NOTIFY too on
    PostgreSQL, unless ``listen`` is off), and writes the bound port to ``port_file`` once serving."""
    with migrated_engine(settings.database_url) as engine:
        store = store_from_settings(settings, f"shard-{shard_id}")
        shard = Shard(shard_id, store, model_version=model_version, mmap_ivf=settings.index_mmap_ivf)
        follower = ManifestFollower(
            shard, session_factory(engine), interval=settings.shard_poll_interval_s, listen=listen
        )
        server = ShardServer(
            shard,
            follower,
            SearchParams.from_settings(settings),
            host=settings.shard_host,
            port=settings.shard_port,
            workers=settings.shard_workers,
            credentials=internal_server_credentials(settings),
        )

        with StopSignals() as signals:  # before anyone can learn the port
            try:
                port = server.start()
                if port_file is not None:
                    port_file.write_text(str(port))
                log.info("shard-server %d ready on %s:%d", shard_id, settings.shard_host, port)
                signals.wait()
                log.info("shard-server %d: stopping (%s)", shard_id, signals.name)
                server.stop(settings.shutdown_grace_s, settings.shutdown_delay_s)
            finally:
                server.stop()
