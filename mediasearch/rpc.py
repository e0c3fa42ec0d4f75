"""Project errors <-> gRPC status codes, in one place for every server and client.

Servers install :class:`ErrorInterceptor` (sync servers) or :class:`AsyncErrorInterceptor`
(grpc.aio servers, e.g. the search gateway): a handler raises project errors and the interceptor
answers with the matching status; anything else is logged with context and answered INTERNAL
without leaking internals. Both use the one table below. The async one also gives every request an
id (the caller's ``x-request-id`` metadata, or a new one), logs with it, returns it as trailing
metadata and reports each call's status and duration to an observer (metrics).
Clients call :func:`from_rpc_error` where a grpc error enters. The HTTP/JSON API answers with
:func:`http_status_for`: the same table, then the canonical gRPC -> HTTP mapping of
``google/rpc/code.proto``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from mediasearch import errors
from mediasearch.requestlog import new_request_id, request_id

log = logging.getLogger(__name__)

_TO_STATUS: tuple[tuple[type[errors.MediaSearchError], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.ManifestMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Conflict, grpc.StatusCode.ABORTED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.CorruptData, grpc.StatusCode.DATA_LOSS),
)

_FROM_STATUS: dict[grpc.StatusCode, type[errors.MediaSearchError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.ManifestMismatch,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Overloaded,
    grpc.StatusCode.ABORTED: errors.Conflict,
    grpc.StatusCode.DATA_LOSS: errors.CorruptData,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
}


# google/rpc/code.proto's HTTP mapping of each code
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status_for(code: grpc.StatusCode) -> int:
    """The HTTP status of a gRPC code (500 for INTERNAL, UNKNOWN, DATA_LOSS)."""
    return HTTP_STATUS.get(code, 500)


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in _TO_STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def from_rpc_error(exc: grpc.RpcError, what: str) -> errors.MediaSearchError:
    """The project error for a failed call (UNAVAILABLE and unknown codes -> Unavailable)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _FROM_STATUS.get(code, errors.Unavailable)
    return cls(f"{what}: {code.name} {details}")


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps project errors raised by unary handlers of a sync server to status codes."""

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return inner(request, context)
            except errors.MediaSearchError as exc:
                context.abort(status_for(exc), str(exc))
            except Exception:
                log.exception("unhandled error in %s", method)
                context.abort(grpc.StatusCode.INTERNAL, "internal error")

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


REQUEST_ID_KEY = "x-request-id"
RETRY_AFTER_KEY = "retry-after"
Observer = Callable[..., None]  # (method, code, seconds[, protocol])
Authorize = Callable[[str, Any], Awaitable[object]]


def _unread(_data: bytes) -> None:
    return None


class AsyncErrorInterceptor(grpc.aio.ServerInterceptor):
    """The same mapping for unary handlers of a grpc.aio server, with request ids and an observer.

    ``observe(method, status, seconds)`` is called once per call (``method`` is the short name,
    e.g. ``SearchText``). INTERNAL answers carry the request id so an operator can find the log.
    ``authorize(full_method, metadata)``, when given, decides whether the call may run (it raises
    the project's Unauthenticated, PermissionDenied or Overloaded) before its request is even
    parsed: one interceptor, so a refusal is logged, counted and answered like any other error.
    """

    class Unparsable:
        """What a request that failed to parse reaches the handler as: grpc's own answer would be
        UNKNOWN, with a traceback logged at ERROR, before any interceptor could see the call."""

        def __init__(self, message: str) -> None:
            self.message = message

    def __init__(self, observe: Observer | None = None, authorize: Authorize | None = None) -> None:
        self.observe = observe
        self.authorize = authorize

    @classmethod
    def _lenient(cls, deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        """``deserialize``, with bytes that are no such message turned into an :class:`Unparsable`."""
        from google.protobuf.message import DecodeError

        if deserialize is None:
            return None
        message = getattr(deserialize, "__self__", None)  # SomeRequest.FromString: its class
        name = getattr(getattr(message, "DESCRIPTOR", None), "name", None) or "request"

        def parse(data: bytes) -> Any:
            try:
                return deserialize(data)
            except DecodeError:
                return cls.Unparsable(name)

        return parse

    async def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method.rsplit("/", 1)[-1]
        incoming = dict(handler_call_details.invocation_metadata or ())
        observe = self.observe
        refusal: Exception | None = None  # raised in the call below: answered like a handler's error
        if self.authorize is not None:
            try:
                await self.authorize(handler_call_details.method, handler_call_details.invocation_metadata)
            except Exception as exc:
                refusal = exc
        # a refused caller's bytes are not parsed
        deserialize = _unread if refusal is not None else self._lenient(handler.request_deserializer)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            rid = str(incoming.get(REQUEST_ID_KEY) or new_request_id())[:64]
            token = request_id.set(rid)
            started = time.perf_counter()
            code, message = grpc.StatusCode.OK, ""
            try:
                context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
                if refusal is not None:
                    raise refusal
                if isinstance(request, AsyncErrorInterceptor.Unparsable):
                    raise errors.InvalidInput(f"the request is not a valid {request.message} message")
                return await inner(request, context)
            except errors.MediaSearchError as exc:
                code, message = status_for(exc), str(exc)
                retry_after = getattr(exc, "retry_after_s", None)
                if retry_after is not None:  # a rate limit says when: HTTP's Retry-After, in seconds
                    after = str(max(1, math.ceil(retry_after)))
                    context.set_trailing_metadata(((REQUEST_ID_KEY, rid), (RETRY_AFTER_KEY, after)))
                # refusals under overload are many and expected: debug, so logging does not add to it
                level = logging.DEBUG if code == grpc.StatusCode.RESOURCE_EXHAUSTED else logging.INFO
                log.log(level, "%s -> %s: %s", method, code.name, message)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the caller went away or its deadline passed
                raise
            except Exception:
                log.exception("unhandled error in %s", method)
                code, message = grpc.StatusCode.INTERNAL, f"internal error (request id {rid})"
            finally:
                if observe is not None:
                    observe(method, code, time.perf_counter() - started)
                request_id.reset(token)
            await context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )
