"""The search gateway's gRPC service (grpc.aio): SearchText, SearchImage, GetImage, Stats.

grpc.aio rather than the shard server's thread pool: a search is mostly waiting (encoder, shard
fan-out, database), and the encoder clients and the router are asyncio, so one event loop carries
hundreds of concurrent searches; the only blocking call (SQLAlchemy) runs in a worker thread.
The handlers only translate protobuf <-> :mod:`mediasearch.gateway.query_path`; errors are raised as
project errors and mapped to status codes by :class:`mediasearch.rpc.AsyncErrorInterceptor`, which
also tags each request with an id, feeds the metrics and, when keys are required, asks
:meth:`mediasearch.gateway.auth.Authorizer.authorize` (API keys, scopes, rate limits). Health
(grpc.health.v1) is always served, without a key; server reflection only when enabled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mediasearch._proto.mediasearch.v1 import search_pb2, search_pb2_grpc
from mediasearch.gateway.filters import Filters, filters_from_proto
from mediasearch.gateway.metrics import GatewayMetrics
from mediasearch.gateway.query_path import Hit, Page, PageRequest, SearchEngine
from mediasearch.metadata.images_repo import ImageRecord
from mediasearch.requestlog import request_id
from mediasearch.rpc import AsyncErrorInterceptor, Authorize

log = logging.getLogger(__name__)
SERVICE_NAME = "mediasearch.v1.SearchService"
StatsProvider = Callable[[], Awaitable[Any]]


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, engine: SearchEngine, stats: StatsProvider, metrics: GatewayMetrics) -> None:
        self.engine = engine
        self.stats = stats
        self.metrics = metrics

    async def SearchText(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        page = await self.engine.search_text(request.text, _page_request(request), _deadline(context))
        return self._response(page)

    async def SearchImage(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        which = request.WhichOneof("query")
        page = await self.engine.search_image(
            request.image if which == "image" else None,
            request.image_id if which == "image_id" else None,
            _page_request(request),
            _deadline(context),
        )
        return self._response(page)

    async def GetImage(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        record = await self.engine.get_image_record(request.id)
        return _result(Hit(record, 0.0, self.engine.locator.url(record)))

    async def Stats(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.stats()

    def _response(self, page: Page) -> Any:
        if page.partial:
            self.metrics.partial.inc()
        t = page.timings
        return search_pb2.SearchResponse(
            results=[_result(h) for h in page.hits],
            next_page_token=page.next_page_token,
            partial=page.partial,
            timings=search_pb2.StageTimings(
                encode_ms=t.encode * 1e3,
                search_ms=t.search * 1e3,
                merge_ms=t.merge * 1e3,
                metadata_ms=t.metadata * 1e3,
                total_ms=t.total * 1e3,
                rounds=t.rounds,
            ),
            request_id=request_id.get(),
            model_version=page.model_version,
        )


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining > 0 else None


def _page_request(request: Any) -> PageRequest:
    return PageRequest(
        top_k=request.top_k,
        filters=filters_from_proto(request.filters) if request.HasField("filters") else Filters(),
        min_score=request.min_score,
        page_token=request.page_token,
    )


def _result(hit: Hit) -> Any:
    image: ImageRecord = hit.image
    created = Timestamp()
    created.FromDatetime(image.created)
    return search_pb2.ImageResult(
        id=image.image_id,
        score=hit.score,
        bucket=image.bucket,
        key=image.key,
        url=hit.url,
        width=image.width or 0,
        height=image.height or 0,
        tags=list(image.tags),
        created=created,
        content_type=image.content_type or "",
    )


class SearchServer:
    """A running gateway: the grpc.aio server with health (and reflection if asked). ``port=0``
    picks one; ``credentials`` serve TLS; ``authorize`` (API keys) is called by the interceptor."""

    def __init__(
        self,
        engine: SearchEngine,
        stats: StatsProvider,
        metrics: GatewayMetrics,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: grpc.ServerCredentials | None = None,
        authorize: Authorize | None = None,
        reflection: bool = False,
        max_message_bytes: int = 64 << 20,
    ) -> None:
        self.engine, self.stats, self.metrics = engine, stats, metrics
        self.host, self.port = host, port
        self.credentials, self.authorize = credentials, authorize
        self.reflection, self.max_message_bytes = reflection, max_message_bytes
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None

    async def start(self) -> int:
        server = grpc.aio.server(
            interceptors=[AsyncErrorInterceptor(self.metrics.observe_call, self.authorize)],
            options=[
                # the largest request is one image (the settings' limit plus the other fields); a
                # larger one is refused by gRPC itself: RESOURCE_EXHAUSTED, "Received message larger
                # than max (N vs. M)"
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", 16 << 20),  # 1,000 results with long URLs: ~2 MB
                ("grpc.so_reuseport", 0),
            ],
        )
        search_pb2_grpc.add_SearchServiceServicer_to_server(
            SearchServicer(self.engine, self.stats, self.metrics), server
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if self.reflection:
            names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
            reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
        address = f"{self.host}:{self.port}"
        if self.credentials is not None:
            self.port = server.add_secure_port(address, self.credentials)
        else:
            self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "search gateway serving on %s:%d (%s)",
            self.host,
            self.port,
            "TLS" if self.credentials else "plaintext",
        )
        return self.port

    async def drain(self, delay_s: float) -> None:
        """Report NOT_SERVING (readiness fails) while still serving calls for ``delay_s``."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if delay_s > 0:
            log.info("search gateway: not ready; serving %.1f s more before refusing new calls", delay_s)
            await asyncio.sleep(delay_s)

    async def stop(self, grace: float = 2.0) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
