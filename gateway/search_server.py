"""The search gateway's gRPC service (grpc.aio): SearchText, SearchImage, GetImage, Stats.

grpc.aio rather than the shard server's thread pool: a search is mostly waiting (encoder, shard
fan-out, database), and the encoder clients and the router are asyncio, so one event loop carries
hundreds of concurrent searches; the only blocking call (SQLAlchemy) runs in a worker thread.
The handlers call :class:`mediasearch.gateway.api.SearchApi` (the same methods serve HTTP/JSON);
errors are raised as project errors and mapped to status codes by
:class:`mediasearch.rpc.AsyncErrorInterceptor`, which also tags each request with an id, feeds
the metrics and, when keys are required, asks
:meth:`mediasearch.gateway.auth.Authorizer.authorize` (API keys, scopes, rate limits). Health
(grpc.health.v1) is always served, without a key; server reflection only when enabled.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mediasearch._proto.mediasearch.v1 import search_pb2_grpc
from mediasearch.gateway.api import SearchApi
from mediasearch.gateway.metrics import GatewayMetrics
from mediasearch.rpc import AsyncErrorInterceptor, Authorize

log = logging.getLogger(__name__)
SERVICE_NAME = "mediasearch.v1.SearchService"


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """gRPC's side of :class:`~mediasearch.gateway.api.SearchApi`: the request's deadline in, the
    message out."""

    def __init__(self, api: SearchApi) -> None:
        self.api = api

    async def SearchText(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.api.search_text(request, _deadline(context))

    async def SearchImage(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.api.search_image(request, _deadline(context))

    async def GetImage(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.api.get_image(request)

    async def Stats(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.api.stats(request)


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining > 0 else None


class SearchServer:
    """A running gateway: the grpc.aio server with health (and reflection if asked). ``port=0``
    picks one; ``credentials`` serve TLS; ``authorize`` (API keys) is called by the interceptor."""

    def __init__(
        self,
        api: SearchApi,
        metrics: GatewayMetrics,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: grpc.ServerCredentials | None = None,
        authorize: Authorize | None = None,
        reflection: bool = False,
        max_message_bytes: int = 64 << 20,
    ) -> None:
        self.api, self.metrics = api, metrics
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
        search_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(self.api), server)
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
