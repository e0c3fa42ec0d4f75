"""The public API ``mediasearch.v1.SearchService``, protocol-neutral: protobuf in, protobuf out.

One implementation behind both protocols: the gRPC servicer
(:mod:`mediasearch.gateway.search_server`) and the HTTP/JSON routes
(:mod:`mediasearch.gateway.http_api`) parse their wire format into the request message, call the
method here, and write the response message back out. The query path itself is
:class:`~mediasearch.gateway.query_path.SearchEngine`; this module only translates between its
types and the proto's, and signs each result's thumbnail link.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from mediasearch._proto.mediasearch.v1 import search_pb2
from mediasearch.gateway.filters import Filters, filters_from_proto
from mediasearch.gateway.links import ImageLinks
from mediasearch.gateway.metrics import GatewayMetrics
from mediasearch.gateway.query_path import Hit, Page, PageRequest, SearchEngine
from mediasearch.metadata.images_repo import ImageRecord
from mediasearch.requestlog import request_id

StatsProvider = Callable[[], Awaitable[Any]]


class SearchApi:
    """SearchText, SearchImage, GetImage and Stats over one :class:`SearchEngine`."""

    def __init__(
        self, engine: SearchEngine, stats: StatsProvider, metrics: GatewayMetrics, links: ImageLinks
    ) -> None:
        self.engine, self.stats_provider, self.metrics, self.links = engine, stats, metrics, links

    async def search_text(self, request: Any, deadline_s: float | None = None) -> Any:
        page = await self.engine.search_text(request.text, _page_request(request), deadline_s)
        return self._response(page)

    async def search_image(self, request: Any, deadline_s: float | None = None) -> Any:
        which = request.WhichOneof("query")
        page = await self.engine.search_image(
            request.image if which == "image" else None,
            request.image_id if which == "image_id" else None,
            _page_request(request),
            deadline_s,
        )
        return self._response(page)

    async def get_image(self, request: Any) -> Any:
        record = await self.engine.get_image_record(request.id)
        return self._result(Hit(record, 0.0, self.engine.locator.url(record)))

    async def stats(self, request: Any = None) -> Any:
        return await self.stats_provider()

    def _response(self, page: Page) -> Any:
        if page.partial:
            self.metrics.partial.inc()
        t = page.timings
        return search_pb2.SearchResponse(
            results=[self._result(h) for h in page.hits],
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

    def _result(self, hit: Hit) -> Any:
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
            thumbnail_url=self.links.thumbnail_url(image.image_id),
        )


def _page_request(request: Any) -> PageRequest:
    return PageRequest(
        top_k=request.top_k,
        filters=filters_from_proto(request.filters) if request.HasField("filters") else Filters(),
        min_score=request.min_score,
        page_token=request.page_token,
    )
