"""Project errors <-> gRPC status codes, in one place for every server and client.

Servers install :class:`ErrorInterceptor`: a handler raises project errors and the interceptor
answers with the matching status; anything else is logged with context and answered INTERNAL
without leaking internals. Clients call :func:`from_rpc_error` where a grpc error enters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from mediasearch import errors

log = logging.getLogger(__name__)

_TO_STATUS: tuple[tuple[type[errors.MediaSearchError], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.ManifestMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Conflict, grpc.StatusCode.ABORTED),
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
}


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
