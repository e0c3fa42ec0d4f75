"""A small synchronous client of the search gateway (the ``query`` command and the demo use it).

Every call translates grpc errors into the project's tree (:func:`mediasearch.rpc.from_rpc_error`),
so a caller sees ``InvalidInput``, ``Unavailable``, ``DeadlineExceeded``... with the server's
readable message.

Several gateways: an address list ``"10.0.0.5:50051,10.0.0.6:50051"`` (IP literals) spreads the
calls round robin over the gateways that report SERVING on their gRPC health service (gRPC's
client-side health checking): a gateway told to stop reports NOT_SERVING at once and gets no new
calls, as a Kubernetes Service drops a pod that fails its readiness probe. ``retries`` adds a gRPC
retry policy for UNAVAILABLE (a call refused by a server that is going away is tried again,
elsewhere when there is an elsewhere). On Kubernetes, one Service address and ``retries`` do
the same.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from mediasearch._proto.mediasearch.v1 import search_pb2, search_pb2_grpc
from mediasearch.errors import NotFound, Unavailable
from mediasearch.rpc import from_rpc_error
from mediasearch.tls import channel_credentials


@dataclass(frozen=True)
class Result:
    id: int
    score: float
    bucket: str
    key: str
    url: str
    width: int
    height: int
    tags: tuple[str, ...]
    created: datetime
    content_type: str


@dataclass(frozen=True)
class Response:
    results: list[Result]
    next_page_token: str
    partial: bool
    timings_ms: dict[str, float]
    request_id: str
    model_version: str


class SearchClient:
    """``with SearchClient("127.0.0.1:50051") as c: c.search_text("two red circles")``.

    ``api_key`` is sent as ``authorization: Bearer <key>``; ``tls`` (or ``tls_ca``, a PEM CA to
    verify the gateway with: implies TLS) connects with TLS; ``tls_cert``/``tls_key`` present a
    client certificate (mTLS)."""

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 10.0,
        api_key: str | None = None,
        tls: bool = False,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        retries: int = 0,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        credentials = channel_credentials(tls_ca, tls_cert, tls_key) if tls or tls_ca or tls_cert else None
        self._channel = open_channel(address, credentials=credentials, retries=retries)
        self._stub = search_pb2_grpc.SearchServiceStub(self._channel)

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError as exc:
            raise Unavailable(f"no search gateway answers at {self.address}") from exc

    def search_text(self, text: str, top_k: int = 10, **options: Any) -> Response:
        request = search_pb2.SearchTextRequest(text=text, top_k=top_k, **_options(options))
        return _response(self._call("SearchText", request))

    def search_image(
        self, image: bytes | None = None, image_id: int | None = None, top_k: int = 10, **options: Any
    ) -> Response:
        query = {"image": image} if image is not None else {"image_id": image_id}
        request = search_pb2.SearchImageRequest(top_k=top_k, **query, **_options(options))
        return _response(self._call("SearchImage", request))

    def get_image(self, image_id: int) -> Result:
        return _result(self._call("GetImage", search_pb2.GetImageRequest(id=image_id)))

    def stats(self) -> Any:
        return self._call("Stats", search_pb2.StatsRequest())

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, method) from exc


def open_channel(
    address: str, *, credentials: grpc.ChannelCredentials | None = None, retries: int = 0
) -> grpc.Channel:
    """A channel to one gateway, or to several (``"ip:port,ip:port"``: round robin over those
    that report SERVING); ``retries`` > 0 retries UNAVAILABLE with backoff (see the module doc)."""
    config: dict[str, Any] = {}
    target = address
    if "," in address:
        target = "ipv4:" + address
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": ""}
    if retries > 0:
        policy = {
            "maxAttempts": retries + 1,
            "initialBackoff": "0.1s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        config["methodConfig"] = [{"name": [{}], "retryPolicy": policy}]
    options: list[tuple[str, Any]] = [
        # a gateway that restarted is connected to again within a second, not after gRPC's
        # default backoff (up to 2 minutes)
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if config:
        options.append(("grpc.service_config", json.dumps(config)))
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=options)
    return grpc.insecure_channel(target, options=options)


def _options(options: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    filters = {k: options.pop(k) for k in list(options) if k in search_pb2.Filters.DESCRIPTOR.fields_by_name}
    if filters:
        f = search_pb2.Filters()
        for name, value in filters.items():
            if value is None or value == () or value == "":
                continue
            if isinstance(value, datetime):
                getattr(f, name).FromDatetime(value)
            elif isinstance(value, list | tuple):
                getattr(f, name).extend(value)
            else:
                setattr(f, name, value)
        out["filters"] = f
    out.update({k: v for k, v in options.items() if v is not None})
    return out


def _result(r: Any) -> Result:
    from datetime import UTC

    return Result(
        id=r.id,
        score=r.score,
        bucket=r.bucket,
        key=r.key,
        url=r.url,
        width=r.width,
        height=r.height,
        tags=tuple(r.tags),
        created=r.created.ToDatetime(tzinfo=UTC),
        content_type=r.content_type,
    )


def _response(r: Any) -> Response:
    t = r.timings
    return Response(
        results=[_result(x) for x in r.results],
        next_page_token=r.next_page_token,
        partial=r.partial,
        timings_ms={
            "encode": t.encode_ms,
            "search": t.search_ms,
            "merge": t.merge_ms,
            "metadata": t.metadata_ms,
            "total": t.total_ms,
        },
        request_id=r.request_id,
        model_version=r.model_version,
    )


def fetch_image(url: str, timeout_s: float = 10.0) -> bytes:
    """The bytes behind a result's URL: ``file://`` or a (presigned) ``http(s)://`` URL."""
    parsed = urllib.parse.urlparse(url)
    try:
        if parsed.scheme == "file":
            return Path(urllib.request.url2pathname(parsed.path)).read_bytes()
        if parsed.scheme in ("http", "https"):
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return bytes(response.read())
    except OSError as exc:
        raise Unavailable(f"cannot fetch {url}: {exc}") from exc
    raise NotFound(f"cannot fetch {url!r}: only file:// and http(s):// URLs")
