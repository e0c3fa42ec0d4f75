"""Assemble a search gateway from settings: the one place where embedded and cluster differ.

- **cluster** (``MEDIASEARCH_SHARD_ADDRESSES`` set): the encoder from ``MEDIASEARCH_ENCODER``
  (Triton in production), a :class:`GrpcRouter` over the shard servers, the database at
  ``MEDIASEARCH_DATABASE_URL`` (PostgreSQL).
- **embedded** (no shard addresses): the same code with in-process shards that follow the
  manifest in the same database (SQLite by default), the local encoder, images in a local folder.

Everything below the router and the encoder is the same object graph in both.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mediasearch._proto.mediasearch.v1 import search_pb2
from mediasearch.encoders.base import Encoder
from mediasearch.encoders.factory import create_encoder
from mediasearch.errors import MediaSearchError
from mediasearch.gateway.locator import ImageLocator
from mediasearch.gateway.metrics import GatewayMetrics
from mediasearch.gateway.query_path import QueryLimits, SearchEngine
from mediasearch.gateway.search_server import SearchServer
from mediasearch.metadata.db import make_engine, migrate, session_factory, translated
from mediasearch.metadata.models import ImageRow
from mediasearch.metadata.readers import open_image_reader
from mediasearch.rpc import from_rpc_error
from mediasearch.settings import Settings
from mediasearch.vector_index.follower import ManifestFollower
from mediasearch.vector_index.router import GrpcRouter, LocalRouter, Router, make_router
from mediasearch.vector_index.shard import Shard
from mediasearch.vector_index.store import open_store

log = logging.getLogger(__name__)


def limits_from(settings: Settings) -> QueryLimits:
    return QueryLimits(
        max_top_k=settings.gateway_max_top_k,
        max_query_chars=settings.gateway_max_query_chars,
        deadline_s=settings.gateway_deadline_s,
        max_active=settings.gateway_max_active,
        max_inflight=settings.gateway_max_inflight,
        max_candidates=settings.gateway_max_candidates,
        oversample=settings.gateway_oversample,
        token_secret=settings.gateway_token_secret,
        nprobe=settings.search_nprobe,
        ef_search=settings.search_ef,
    )


@dataclass
class Gateway:
    """A started gateway and everything it owns; :meth:`stop` releases all of it."""

    settings: Settings
    server: SearchServer
    metrics: GatewayMetrics
    encoder: Encoder
    router: Router
    sessions: sessionmaker[Session]
    followers: list[ManifestFollower] = field(default_factory=list)
    search: SearchEngine | None = None
    port: int = 0
    metrics_port: int = 0

    @property
    def mode(self) -> str:
        return "cluster" if self.settings.shard_addresses else "embedded"

    @property
    def address(self) -> str:
        return f"{self.settings.gateway_host}:{self.port}"

    async def stop(self) -> None:
        await self.server.stop()
        if self.search is not None:
            await self.search.close()
        self.metrics.stop()
        for follower in self.followers:
            follower.stop()
        for shard in getattr(self.router, "shards", ()):
            shard.close()
        await self.router.close()
        await self.encoder.close()
        bind = self.sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()

    async def stats(self) -> object:
        shards = await shard_stats(self.router)
        by_status = await asyncio.to_thread(_images_by_status, self.sessions)
        return search_pb2.StatsResponse(
            shards=shards,
            vectors=sum(s.vectors for s in shards),
            images_by_status=by_status,
            model_version=self.encoder.model_version,
            mode=self.mode,
        )


async def start_gateway(
    settings: Settings, *, port: int | None = None, metrics_port: int | None = None
) -> Gateway:
    """Build and start the gateway described by ``settings`` (ports may be overridden; 0 = free)."""
    # No pre-ping on the query path: it costs a database round trip per request; a connection the
    # server dropped fails one request (UNAVAILABLE) and is replaced.
    is_pg = settings.database_url.startswith(("postgres", "postgresql"))
    engine = make_engine(settings.database_url, **({"pool_pre_ping": False} if is_pg else {}))
    migrate(engine)
    sessions = session_factory(engine)
    encoder = create_encoder(settings)
    followers: list[ManifestFollower] = []
    shards: list[Shard] = []
    if not settings.shard_addresses:
        store = open_store(
            settings.segment_store_url,
            cache_dir=settings.segment_cache_dir,
            endpoint_url=settings.s3_endpoint_url,
        )
        for s in range(settings.num_shards):
            shard = Shard(s, store, mmap_ivf=settings.index_mmap_ivf)
            follower = ManifestFollower(shard, sessions, interval=settings.shard_poll_interval_s)
            follower.sync_once()  # serve what is indexed from the first request on
            followers.append(follower)
            shards.append(shard)
    router = make_router(settings, shards)
    metrics = GatewayMetrics()
    locator = ImageLocator(
        images_root=settings.images_root,
        s3_endpoint_url=settings.s3_endpoint_url,
        presign=settings.gateway_presign_urls,
        expiry_s=settings.gateway_url_expiry_s,
    )
    search = SearchEngine(
        encoder, router, open_image_reader(engine), locator, limits_from(settings), metrics.observe_stage
    )
    metrics.inflight.set_function(lambda: search.admission.active + search.admission.queued)
    gateway = Gateway(settings, None, metrics, encoder, router, sessions, followers, search)  # type: ignore[arg-type]
    gateway.server = SearchServer(
        search,
        gateway.stats,
        metrics,
        host=settings.gateway_host,
        port=settings.gateway_port if port is None else port,
    )
    try:
        await asyncio.to_thread(locator.warm)
        await encoder.start()
        for follower in followers:
            follower.start()
        gateway.port = await gateway.server.start()
        wanted_metrics = settings.gateway_metrics_port if metrics_port is None else metrics_port
        if wanted_metrics or metrics_port == 0:
            gateway.metrics_port = metrics.serve(settings.gateway_host, wanted_metrics)
    except BaseException:
        await gateway.stop()
        raise
    log.info(
        "gateway (%s) on %s, metrics on :%d, model %s",
        gateway.mode,
        gateway.address,
        gateway.metrics_port,
        encoder.model_version,
    )
    return gateway


async def shard_stats(router: Router) -> list[Any]:
    """One ShardStats per shard: in-process shards directly, shard servers over their Stats RPC."""
    if isinstance(router, LocalRouter):
        out = []
        for shard in router.shards:
            s = shard.stats()
            out.append(
                search_pb2.ShardStats(
                    shard=s.shard, vectors=s.vectors, segments=len(s.segments), available=True
                )
            )
        return out
    assert isinstance(router, GrpcRouter)
    return list(await asyncio.gather(*(_remote_stats(i, r) for i, r in enumerate(router.replicas))))


async def _remote_stats(shard: int, replicas: list[str]) -> Any:
    from mediasearch._proto.mediasearch.v1 import shard_pb2, shard_pb2_grpc

    for address in replicas:
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                s = await shard_pb2_grpc.ShardServiceStub(channel).Stats(
                    shard_pb2.ShardStatsRequest(), timeout=1.0
                )
            return search_pb2.ShardStats(
                shard=shard, vectors=s.vectors, segments=len(s.segment_ids), available=True
            )
        except grpc.RpcError as exc:
            log.warning("%s", from_rpc_error(exc, f"stats of shard {shard} at {address}"))
    return search_pb2.ShardStats(shard=shard, available=False)


def _images_by_status(sessions: sessionmaker[Session]) -> dict[str, int]:
    try:
        with translated("counting images"), sessions() as session:
            rows = session.execute(select(ImageRow.status, func.count()).group_by(ImageRow.status)).all()
    except MediaSearchError as exc:
        log.warning("stats: %s", exc)
        return {}
    return {str(status): int(n) for status, n in rows}


def embedded_settings(folder: Path) -> dict[str, object]:
    """Overrides that put an embedded deployment's state under ``folder`` (demo, tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "database_url": f"sqlite:///{folder / 'mediasearch.db'}",
        "segment_store_url": (folder / "segments").resolve().as_uri(),
        "segment_cache_dir": folder / ".segment-cache",
        "shard_addresses": (),
        "encoder": "local",
    }
