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
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import faiss
from sqlalchemy.orm import Session, sessionmaker

from mediasearch._proto.mediasearch.v1 import search_pb2
from mediasearch.encoders.base import Encoder
from mediasearch.encoders.factory import create_encoder
from mediasearch.errors import CorruptData, MediaSearchError, NotFound
from mediasearch.gateway.api import SearchApi
from mediasearch.gateway.auth import Authorizer, KeyCache, RateLimiter
from mediasearch.gateway.http_api import HttpContext, HttpServer, build_app
from mediasearch.gateway.links import ImageLinks
from mediasearch.gateway.locator import ImageLocator
from mediasearch.gateway.metrics import GatewayMetrics
from mediasearch.gateway.query_path import QueryLimits, SearchEngine
from mediasearch.gateway.search_server import SearchServer
from mediasearch.gateway.security import GatewaySecurity
from mediasearch.metadata.db import make_engine, migrate, session_factory, translated
from mediasearch.metadata.images_repo import count_by_status
from mediasearch.metadata.readers import open_image_reader
from mediasearch.preprocess.image import DecodeLimits
from mediasearch.settings import Settings
from mediasearch.vector_index.follower import GenerationFollower, ManifestFollower
from mediasearch.vector_index.router import Router, make_router
from mediasearch.vector_index.shard import Shard
from mediasearch.vector_index.store import store_from_settings
from mediasearch.vector_index.upgrade import live_model, live_model_settings, reindex_progress

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """A started gateway and everything it owns; :meth:`stop` releases all of it."""

    settings: Settings
    server: SearchServer
    metrics: GatewayMetrics
    encoder: Encoder
    router: Router
    sessions: sessionmaker[Session]
    followers: list[ManifestFollower | GenerationFollower] = field(default_factory=list)
    shards: list[Shard] = field(default_factory=list)  # in-process ones (embedded mode)
    search: SearchEngine | None = None
    keys: KeyCache | None = None  # API keys (auth required)
    http: HttpServer | None = None  # HTTP/JSON API and the search page (unless its port is -1)
    model_task: asyncio.Task[None] | None = None  # follows the live generation's model
    live_number: int = 0  # the live generation's row, as last read (0: none, or the exact layout's)
    reindex: tuple[int, str, int] | None = None  # a generation being built, as last read
    _model_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _retired_encoders: list[asyncio.Task[None]] = field(default_factory=list)
    stopped: bool = False
    draining: bool = False
    port: int = 0
    metrics_port: int = 0
    http_port: int = 0

    @property
    def mode(self) -> str:
        return "cluster" if self.settings.cluster_mode else "embedded"

    @property
    def address(self) -> str:
        return f"{self.settings.gateway_host}:{self.port}"

    @property
    def page_url(self) -> str:
        """The search page (and the HTTP/JSON API under it); empty when HTTP is off."""
        if self.http is None:
            return ""
        host = self.settings.gateway_host
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.settings.gateway_tls_cert else "http"
        return f"{scheme}://{host}:{self.http_port}/"

    async def stop(self, *, delay_s: float = 0.0, grace_s: float = 2.0) -> None:
        """Not ready for ``delay_s`` while still serving, then refuse new calls and give those in
        flight ``grace_s``, then release everything. Once only: later calls do nothing."""
        if self.stopped:
            return
        self.stopped = self.draining = True
        for task in (self.model_task, *self._retired_encoders):  # a retired encoder closes now
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.server.drain(delay_s)
        if self.http is not None:
            await self.http.stop()
        await self.server.stop(grace_s)
        if self.keys is not None:
            await self.keys.close()
        if self.search is not None:
            await self.search.close()
        self.metrics.stop()
        for follower in self.followers:
            follower.stop()
        for shard in self.shards:
            shard.close()
        await self.router.close()
        await self.encoder.close()
        bind = self.sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()

    async def stats(self) -> object:
        shards = [
            search_pb2.ShardStats(
                shard=s.shard, vectors=s.vectors, segments=s.segments, available=s.available
            )
            for s in await self.router.stats()
        ]
        by_status = await asyncio.to_thread(_images_by_status, self.sessions)
        return search_pb2.StatsResponse(
            shards=shards,
            vectors=sum(s.vectors for s in shards),
            images_by_status=by_status,
            model_version=self.encoder.model_version,
            mode=self.mode,
            index_generation=self.live_number,
            reindex_generation=self.reindex[0] if self.reindex else 0,
            reindex_model_version=self.reindex[1] if self.reindex else "",
            reindex_vectors=self.reindex[2] if self.reindex else 0,
        )

    async def follow_model(self) -> None:
        """Encode with the live generation's model: poll it (and the query path asks at once when a
        shard refuses a query's model, see :meth:`sync_model`)."""
        while True:
            await asyncio.sleep(self.settings.shard_poll_interval_s)
            try:
                await self.sync_model()
            except MediaSearchError as exc:
                log.warning("cannot follow the live generation's model now: %s", exc)

    async def sync_model(self) -> bool:
        """After a switch (or a rollback): start an encoder for the live generation's model, check
        its version, swap it in (the old one is closed once the searches using it are done). True
        when the encoder changed. Page tokens of the old model are refused: a new result set."""
        async with self._model_lock:
            live = await asyncio.to_thread(self._live_model)
            self.live_number = live[0] if live is not None else 0
            if live is None or self.search is None or live[1] == self.encoder.model_version:
                return False
            wanted = self.settings.with_overrides(model_name=live[2] or self.settings.model_name)
            fresh = create_encoder(wanted)
            await fresh.start()
            if fresh.model_version != live[1]:
                await fresh.close()
                log.error(
                    "generation %d is live with model %s, but %s in the model repository is %s: "
                    "still encoding with %s", live[0], live[1], wanted.model_name, fresh.model_version,
                    self.encoder.model_version,
                )  # fmt: skip
                return False
            old, self.encoder, self.search.encoder = self.encoder, fresh, fresh
            log.info("generation %d is live: encoding with model %s", live[0], fresh.model_version)
            self._retired_encoders.append(asyncio.create_task(self._close_later(old), name="retired encoder"))
            return True

    async def _close_later(self, encoder: Encoder) -> None:
        try:
            await asyncio.sleep(max(self.settings.gateway_deadline_s, 1.0))  # searches under way
        finally:
            await encoder.close()

    def _live_model(self) -> tuple[int, str, str] | None:
        with self.sessions() as session, translated("reading the live generation's model"):
            self.reindex = reindex_progress(session)
            return live_model(session)


async def start_gateway(
    settings: Settings,
    *,
    port: int | None = None,
    metrics_port: int | None = None,
    http_port: int | None = None,
) -> Gateway:
    """Build and start the gateway described by ``settings`` (ports may be overridden; 0 = free;
    ``http_port`` -1: no HTTP)."""
    # The router probes the quantizer on the event loop: one OpenMP thread, so a coalesced batch's
    # probe never spins up a second core that the encoder (or a co-located Triton) needs.
    faiss.omp_set_num_threads(1)
    security = GatewaySecurity.from_settings(settings)
    # No pre-ping on the query path: it costs a database round trip per request; a connection the
    # server dropped fails one request (UNAVAILABLE) and is replaced.
    is_pg = settings.database_url.startswith(("postgres", "postgresql"))
    engine = make_engine(settings.database_url, **({"pool_pre_ping": False} if is_pg else {}))
    migrate(engine)
    sessions = session_factory(engine)
    # the live generation's model: a gateway started after a switch (or a rollback) encodes with it
    encoder = create_encoder(live_model_settings(settings, sessions))
    followers: list[ManifestFollower | GenerationFollower] = []
    shards: list[Shard] = []
    store = store_from_settings(settings, "gateway" if settings.shard_addresses else "")
    # the live index generation's quantizer: the router searches it once per query and calls only
    # the shards that own the nearest lists (both modes: one code path)
    generations = GenerationFollower(sessions, store, interval=settings.shard_poll_interval_s)
    try:
        generations.sync_once()
    except (CorruptData, NotFound) as exc:  # shards probe their own copy meanwhile: slower, same answers
        log.warning("cannot load the index generation yet, asking every shard: %s", exc)
    followers.append(generations)
    if not settings.shard_addresses:
        for s in range(settings.num_shards):
            shard = Shard(s, store, mmap_ivf=settings.index_mmap_ivf)
            follower = ManifestFollower(shard, sessions, interval=settings.shard_poll_interval_s)
            follower.sync_once()  # serve what is indexed from the first request on
            followers.append(follower)
            shards.append(shard)
    router = make_router(settings, shards, generations.current)
    metrics = GatewayMetrics()
    locator = ImageLocator(
        images_root=settings.images_root,
        local_bucket=settings.indexer_local_bucket,
        s3_endpoint_url=settings.s3_endpoint_url,
        presign=security.presign_urls,
        expiry_s=settings.gateway_url_expiry_s,
        max_bytes=settings.max_image_bytes,
    )
    search = SearchEngine(
        encoder,
        router,
        open_image_reader(engine),
        locator,
        QueryLimits.from_settings(settings),
        metrics.observe_stage,
    )
    metrics.inflight.set_function(lambda: search.admission.active + search.admission.queued)
    gateway = Gateway(settings, None, metrics, encoder, router, sessions, followers, shards, search)  # type: ignore[arg-type]
    search.refresh_model = gateway.sync_model
    authorizer = None
    if security.auth_required:
        gateway.keys = KeyCache(sessions, settings.gateway_keys_refresh_s)
        limiter = RateLimiter(settings.gateway_rate_rps, settings.gateway_rate_burst)
        authorizer = Authorizer(gateway.keys, limiter)
    links = ImageLinks(
        settings.token_secrets(), settings.gateway_url_expiry_s, settings.gateway_http_public_url
    )
    api = SearchApi(search, gateway.stats, metrics, links)
    gateway.server = SearchServer(
        api,
        metrics,
        host=settings.gateway_host,
        port=settings.gateway_port if port is None else port,
        credentials=security.credentials(),
        authorize=authorizer.authorize if authorizer is not None else None,
        reflection=settings.gateway_reflection,
        max_message_bytes=settings.max_image_bytes + (64 << 10),
    )
    wanted_http = settings.gateway_http_port if http_port is None else http_port
    if wanted_http >= 0:
        context = HttpContext(
            api=api,
            links=links,
            limits=DecodeLimits.from_settings(settings),
            thumbnail_size=settings.thumbnail_size or 256,
            authorize=authorizer.authorize if authorizer is not None else None,
            observe=metrics.observe_call,
            serving=lambda: not gateway.draining,
            max_image_bytes=settings.max_image_bytes,
            thumbnails=asyncio.Semaphore(4),
        )
        tls = None
        if settings.gateway_tls_cert is not None and settings.gateway_tls_key is not None:
            tls = (settings.gateway_tls_cert, settings.gateway_tls_key, settings.gateway_tls_client_ca)
        gateway.http = HttpServer(
            build_app(context, auth=security.auth_required),
            host=settings.gateway_host,
            port=wanted_http,
            ssl_context=tls,
        )
    try:
        if gateway.keys is not None:
            await gateway.keys.start()
        await asyncio.to_thread(locator.warm)
        await encoder.start()
        for each in followers:
            each.start()
        gateway.port = await gateway.server.start()
        live = await asyncio.to_thread(gateway._live_model)
        gateway.live_number = live[0] if live is not None else 0
        gateway.model_task = asyncio.create_task(gateway.follow_model(), name="model follower")
        if gateway.http is not None:
            gateway.http_port = await gateway.http.start()
        wanted_metrics = settings.gateway_metrics_port if metrics_port is None else metrics_port
        if wanted_metrics or metrics_port == 0:
            gateway.metrics_port = metrics.serve(settings.gateway_host, wanted_metrics)
    except BaseException:
        await gateway.stop()
        raise
    log.info(
        "gateway (%s) on %s, HTTP on :%d, metrics on :%d, model %s, API keys %s, %s",
        gateway.mode,
        gateway.address,
        gateway.http_port,
        gateway.metrics_port,
        encoder.model_version,
        "required" if security.auth_required else "off",
        "TLS" + (" with client certificates" if settings.gateway_tls_client_ca else "")
        if settings.gateway_tls_cert
        else "plaintext",
    )
    return gateway


def serve_gateway(
    settings: Settings,
    *,
    port: int | None = None,
    metrics_port: int | None = None,
    http_port: int | None = None,
    port_file: Path | None = None,
    on_ready: Callable[[Gateway], None] | None = None,
) -> None:
    """``mediasearch serve``: run the gateway until SIGTERM or SIGINT, then stop it cleanly. Once it
    serves, the ports go to ``port_file`` ("GRPC METRICS HTTP") and ``on_ready(gateway)`` is called."""

    async def serve() -> None:
        gateway = await start_gateway(settings, port=port, metrics_port=metrics_port, http_port=http_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if port_file is not None:
                port_file.write_text(f"{gateway.port} {gateway.metrics_port} {gateway.http_port}")
            if on_ready is not None:
                on_ready(gateway)
            await stop.wait()
            log.info("gateway: stopping (SIGTERM or SIGINT)")
            await gateway.stop(delay_s=settings.shutdown_delay_s, grace_s=settings.shutdown_grace_s)
        finally:
            await gateway.stop()  # a no-op after a clean stop

    asyncio.run(serve())


class BackgroundGateway:
    """A gateway on its own event loop in a background thread, for synchronous callers (the demo):
    ``start()``, the searches, ``stop()``."""

    def __init__(self, settings: Settings, port: int | None = None, http_port: int | None = None) -> None:
        self.settings, self.port, self.http_port = settings, port, http_port
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self._gateway: Gateway | None = None
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        assert self._gateway is not None, "start() first"
        return self._gateway.address

    @property
    def page_url(self) -> str:
        assert self._gateway is not None, "start() first"
        return self._gateway.page_url

    def start(self, timeout_s: float = 120.0) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_gateway(self.settings, port=self.port, http_port=self.http_port), self.loop
        )
        self._gateway = future.result(timeout=timeout_s)

    def wait(self) -> None:
        """Until :meth:`stop` (from another thread) or Ctrl-C."""
        while not self._stopped.wait(0.5):
            pass

    def stop(self) -> None:
        if self._gateway is not None:
            asyncio.run_coroutine_threadsafe(self._gateway.stop(), self.loop).result(timeout=30)
            self._gateway = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self._stopped.set()


def _images_by_status(sessions: sessionmaker[Session]) -> dict[str, int]:
    try:
        with sessions() as session:
            return count_by_status(session)
    except MediaSearchError as exc:
        log.warning("stats: %s", exc)
        return {}


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
