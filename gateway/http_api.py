"""HTTP/JSON beside gRPC: ``mediasearch.v1`` one to one, the search page, image thumbnails.

A Starlette (ASGI) app served by uvicorn on the gateway's own event loop, on its own port
(``MEDIASEARCH_GATEWAY_HTTP_PORT``). Each API route parses its body into the proto's request
message with :mod:`google.protobuf.json_format` (proto3 JSON names), calls the same
:class:`~mediasearch.gateway.api.SearchApi` method as the gRPC servicer, and writes the response
message back as JSON with every field present. Nothing about the query path is HTTP's own.

Keys, scopes and rate limits are the gRPC ones: ``Authorization: Bearer <key>`` goes to the same
:meth:`~mediasearch.gateway.auth.Authorizer.authorize` under the route's gRPC method name. Errors are
the same tree mapped by the same table (:func:`mediasearch.rpc.status_for`), then to HTTP
(:func:`mediasearch.rpc.http_status_for`), with a JSON body naming the request id and, for 429, a
``Retry-After`` header. Thumbnails and originals are reached through signed links
(:mod:`mediasearch.gateway.links`) so an ``<img>`` can load them without a key.

Routes: ``POST /v1/search/text``, ``POST /v1/search/image`` (JSON with base64 ``image`` or
``imageId``, or a multipart upload), ``GET /v1/images/{id}`` (+ ``/thumbnail``, ``/original``),
``GET /v1/stats``, ``GET /healthz``, ``GET /openapi.json``, and the page at ``/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import grpc
import uvicorn
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mediasearch import errors
from mediasearch._proto.mediasearch.v1 import search_pb2
from mediasearch.gateway.api import SearchApi
from mediasearch.gateway.links import ImageLinks
from mediasearch.gateway.openapi import openapi_document
from mediasearch.preprocess.image import DecodeLimits
from mediasearch.requestlog import new_request_id, request_id
from mediasearch.rpc import REQUEST_ID_KEY, Authorize, Observer, http_status_for, status_for
from mediasearch.tls import server_ssl_context

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).parent / "web"
SERVICE = "/mediasearch.v1.SearchService/"
_JSON_LIMIT = 1 << 20  # a text search's body: far above any valid one
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # signed links stay out of other sites' logs
}
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob: https: http:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class _TooLarge(errors.InvalidInput):
    pass


class _Unsupported(errors.InvalidInput):
    pass


@dataclass
class HttpContext:
    """What the routes need besides the API."""

    api: SearchApi
    links: ImageLinks
    limits: DecodeLimits
    thumbnail_size: int
    authorize: Authorize | None
    observe: Observer | None
    serving: Callable[[], bool]
    max_image_bytes: int
    thumbnails: asyncio.Semaphore  # made on the fly (images without a stored one): bounded


def _error_body(code: grpc.StatusCode, message: str, rid: str) -> dict[str, Any]:
    return {
        "error": {"code": code.name, "status": http_status_for(code), "message": message, "requestId": rid}
    }


def _to_json(message: Message) -> bytes:
    body = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _parse(data: bytes | dict[str, Any], message: Message) -> Message:
    try:
        if isinstance(data, dict):
            return json_format.ParseDict(data, message)
        if not data.strip():
            raise errors.InvalidInput("the body is empty: send the request as a JSON object")
        return json_format.Parse(data, message)
    except json_format.ParseError as exc:
        raise errors.InvalidInput(f"the request is not a valid {message.DESCRIPTOR.name}: {exc}") from exc
    except (RecursionError, ValueError) as exc:
        raise errors.InvalidInput(f"the body is not valid JSON: {exc}") from exc


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(f"the body is {int(declared)} bytes; at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _require_json(request: Request) -> None:
    """A JSON body under any content type (``curl -d`` says form-urlencoded), but not a multipart
    upload where the route takes none."""
    kind = _media_type(request)
    if kind.startswith("multipart/"):
        raise _Unsupported(f"send the request as application/json, not {kind}")


def _image_id(request: Request) -> int:
    text = request.path_params["id"]
    try:
        value = int(text)
    except ValueError:
        raise errors.InvalidInput(f"image id {text[:40]!r} is not a number") from None
    if not 0 < value < 2**63:
        raise errors.InvalidInput(f"image id {value} is out of range")
    return value


@contextlib.contextmanager
def _request_id(request: Request) -> Iterator[str]:
    rid = str(request.headers.get(REQUEST_ID_KEY) or new_request_id())[:64]
    token = request_id.set(rid)
    try:
        yield rid
    finally:
        request_id.reset(token)


Handler = Callable[[Request], Awaitable[Response]]


def _route(
    ctx: HttpContext, method: str, handler: Handler, *, keyed: bool = True
) -> Callable[[Request], Awaitable[Response]]:
    """One route: request id, the key check (``method``: its gRPC method name, which decides the
    scope; ``keyed=False``: the handler checks itself), the handler, errors as JSON, metrics."""

    async def endpoint(request: Request) -> Response:
        with _request_id(request) as rid:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if keyed and ctx.authorize is not None:
                    header = request.headers.get("authorization")
                    await ctx.authorize(SERVICE + method, [("authorization", header)] if header else [])
                response = await handler(request)
            except errors.MediaSearchError as exc:
                code = status_for(exc)
                status = http_status_for(code)
                if isinstance(exc, _TooLarge):
                    status = 413
                elif isinstance(exc, _Unsupported):
                    status = 415
                headers = {REQUEST_ID_KEY: rid, **_SECURITY_HEADERS}
                retry_after = getattr(exc, "retry_after_s", None)
                if retry_after is not None:
                    headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
                level = logging.DEBUG if code == grpc.StatusCode.RESOURCE_EXHAUSTED else logging.INFO
                log.log(
                    level, "HTTP %s %s -> %d %s: %s", request.method, request.url.path, status, code.name, exc
                )
                body = _error_body(code, str(exc), rid)
                body["error"]["status"] = status
                return JSONResponse(body, status_code=status, headers=headers)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                log.exception("unhandled error in HTTP %s %s", request.method, request.url.path)
                code = grpc.StatusCode.INTERNAL
                body = _error_body(code, f"internal error (request id {rid})", rid)
                return JSONResponse(body, status_code=500, headers={REQUEST_ID_KEY: rid})
            finally:
                if ctx.observe is not None:
                    ctx.observe(method, code, time.perf_counter() - started, "http")
            response.headers[REQUEST_ID_KEY] = rid
            response.headers.update(_SECURITY_HEADERS)
            return response

    return endpoint


def _json_response(message: Message) -> Response:
    return Response(_to_json(message), media_type="application/json")


def build_app(ctx: HttpContext, *, auth: bool) -> Starlette:
    api = ctx.api
    limits = api.engine.limits
    document = json.dumps(
        openapi_document(auth=auth, max_top_k=limits.max_top_k, max_query_chars=limits.max_query_chars)
    ).encode()

    async def search_text(request: Request) -> Response:
        _require_json(request)
        message = _parse(await _body(request, _JSON_LIMIT), search_pb2.SearchTextRequest())
        return _json_response(await api.search_text(message))

    async def search_image(request: Request) -> Response:
        image_limit = ctx.max_image_bytes
        if _media_type(request) == "multipart/form-data":
            message = await _multipart_image(request, image_limit)
        else:
            _require_json(request)
            # base64 is 4/3 of the image, plus the other fields
            body = await _body(request, image_limit * 4 // 3 + (64 << 10))
            message = _parse(body, search_pb2.SearchImageRequest())
        if message.WhichOneof("query") == "image" and len(message.image) > image_limit:
            raise errors.ImageError(f"the image is {len(message.image)} bytes; at most {image_limit}")
        return _json_response(await api.search_image(message))

    async def get_image(request: Request) -> Response:
        message = search_pb2.GetImageRequest(id=_image_id(request))
        return _json_response(await api.get_image(message))

    async def stats(request: Request) -> Response:
        return _json_response(await api.stats(search_pb2.StatsRequest()))

    async def linked(request: Request, original: bool) -> Response:
        image_id = _image_id(request)
        q = request.query_params
        if ctx.authorize is not None and not request.headers.get("authorization"):
            ctx.links.check(image_id, q.get("expires"), q.get("sig"))
        elif ctx.authorize is not None:
            await ctx.authorize(SERVICE + "GetImage", [("authorization", request.headers["authorization"])])
        engine = api.engine
        cache = {"Cache-Control": f"private, max-age={ctx.links.expiry_s // 2}"}
        if not original:  # one primary-key read, of an INDEXED image's row only
            stored = await engine.metadata.thumbnail(image_id)
            if stored is not None:
                return Response(stored, media_type="image/webp", headers=cache)
        record = await engine.get_image_record(image_id)
        if original:
            url = engine.locator.url(record)
            if url.startswith(("https://", "http://")):  # a presigned S3 URL: the bytes need not pass here
                return RedirectResponse(url, status_code=307)
            data = await engine.locator.read(record)
            return Response(data, media_type=record.content_type or "application/octet-stream", headers=cache)
        async with ctx.thumbnails:  # indexed before thumbnails existed (or with thumbnails off)
            data = await engine.locator.read(record)
            made = await asyncio.to_thread(_thumbnail, data, ctx.limits, ctx.thumbnail_size)
        return Response(made, media_type="image/webp", headers=cache)

    async def thumbnail(request: Request) -> Response:
        return await linked(request, original=False)

    async def original(request: Request) -> Response:
        return await linked(request, original=True)

    async def healthz(request: Request) -> Response:
        serving = ctx.serving()
        return JSONResponse(
            {"status": "SERVING" if serving else "NOT_SERVING"}, status_code=200 if serving else 503
        )

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    web = _WebFiles(WEB_ROOT)

    async def page(request: Request) -> Response:
        return web.response(request, "index.html", {"Content-Security-Policy": _PAGE_CSP})

    async def static(request: Request) -> Response:
        return web.response(request, request.path_params["name"])

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        code = grpc.StatusCode.NOT_FOUND if status == 404 else grpc.StatusCode.INVALID_ARGUMENT
        if status == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = f"no route {request.url.path}: see /openapi.json"
        headers = dict(getattr(exc, "headers", None) or {})  # 405: Allow
        with _request_id(request) as rid:
            body = _error_body(code, message, rid)
            body["error"]["status"] = status
            return JSONResponse(body, status_code=status, headers={**headers, REQUEST_ID_KEY: rid})

    routes: list[BaseRoute] = [
        Route("/v1/search/text", _route(ctx, "SearchText", search_text), methods=["POST"]),
        Route("/v1/search/image", _route(ctx, "SearchImage", search_image), methods=["POST"]),
        Route("/v1/images/{id}", _route(ctx, "GetImage", get_image), methods=["GET"]),
        Route(
            "/v1/images/{id}/thumbnail", _route(ctx, "GetThumbnail", thumbnail, keyed=False), methods=["GET"]
        ),
        Route("/v1/images/{id}/original", _route(ctx, "GetOriginal", original, keyed=False), methods=["GET"]),
        Route("/v1/stats", _route(ctx, "Stats", stats), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/", page, methods=["GET"]),
    ]
    routes.append(Route("/static/{name}", static, methods=["GET", "HEAD"]))
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


class _WebFiles:
    """The page's files, read once (a dozen small files): each answer is one write from memory,
    with an ETag, and ``no-cache`` so a browser revalidates (a 304) and a new release shows at once."""

    _TYPES: ClassVar[dict[str, str]] = {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
    }

    def __init__(self, root: Path) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        for path in sorted(root.glob("*")) if root.is_dir() else ():
            kind = self._TYPES.get(path.suffix)
            if kind is not None and path.is_file():
                data = path.read_bytes()
                self.files[path.name] = (data, kind, f'"{hashlib.sha256(data).hexdigest()[:20]}"')

    def response(self, request: Request, name: str, headers: dict[str, str] | None = None) -> Response:
        found = self.files.get(name)
        if found is None:
            raise HTTPException(404)
        data, kind, etag = found
        sent = {"ETag": etag, "Cache-Control": "no-cache", **_SECURITY_HEADERS, **(headers or {})}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=sent)
        return Response(data, media_type=kind, headers=sent)


def _thumbnail(data: bytes, limits: DecodeLimits, size: int) -> bytes:
    from mediasearch.preprocess.thumbnail import thumbnail_from_bytes

    return thumbnail_from_bytes(data, limits, size)


async def _multipart_image(request: Request, limit: int) -> Message:
    """A browser's upload: the file in ``image``, the other fields as form fields."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + (64 << 10):
        raise _TooLarge(f"the body is {int(declared)} bytes; at most {limit + (64 << 10)}")
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=64 << 10)
    except HTTPException as exc:
        raise errors.InvalidInput(f"the multipart body cannot be read: {exc.detail}") from exc
    except (ValueError, KeyError) as exc:  # python-multipart's parse errors
        raise errors.InvalidInput(f"the multipart body cannot be read: {exc}") from exc
    fields: dict[str, Any] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "image":
                    raise errors.InvalidInput(f"unexpected file field {name!r}: send the picture as 'image'")
                data = await value.read(limit + 1)
                if len(data) > limit:
                    raise errors.ImageError(f"the image is larger than {limit} bytes")
                fields["image"] = data
            elif name == "filters":
                try:
                    fields["filters"] = json.loads(value) if value.strip() else {}
                except ValueError as exc:
                    raise errors.InvalidInput(f"filters is not valid JSON: {exc}") from exc
            elif name in ("topK", "top_k", "minScore", "min_score", "imageId", "image_id"):
                if value.strip():
                    fields[name] = value.strip()
            elif name in ("pageToken", "page_token"):
                fields[name] = value
            else:
                raise errors.InvalidInput(f"unexpected form field {name!r}")
    finally:
        await form.close()
    image = fields.pop("image", None)
    message = _parse(fields, search_pb2.SearchImageRequest())
    if image is not None:
        if message.WhichOneof("query") is not None:
            raise errors.InvalidInput("give an image or an imageId, not both")
        message.image = image
    return message


class HttpServer:
    """uvicorn on the running event loop; ``port=0`` picks a free port."""

    def __init__(
        self,
        app: Starlette,
        *,
        host: str,
        port: int,
        ssl_context: tuple[Path, Path, Path | None] | None = None,
    ) -> None:
        self.app, self.host, self.port, self.tls = app, host, port, ssl_context
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
        # without it a response's header and body writes wait out the client's delayed ACK (40 ms)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.host, self.port))
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=5,
            http="httptools",
        )
        config.load()
        if self.tls is not None:  # the gRPC port's certificate, renewed the same way
            config.ssl = server_ssl_context(*self.tls)
        self._server = _Server(config)
        self._socket = sock
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it failed
                raise errors.Unavailable(f"the HTTP server on {self.host}:{self.port} did not start")
            await asyncio.sleep(0.01)
        log.info(
            "HTTP/JSON API and search page on %s://%s:%d/",
            "https" if self.tls else "http",
            self.host,
            self.port,
        )
        return self.port

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task
        if self._socket is not None:
            self._socket.close()
        self._server = self._task = self._socket = None


class _Server(uvicorn.Server):
    """The gateway owns the signals (SIGTERM drains gRPC and HTTP together): uvicorn must not."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
