"""The grpc.aio error interceptor: project errors -> status codes, unknown errors -> INTERNAL with a
request id and no internals, every call observed, request ids echoed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from mediasearch import errors
from mediasearch.requestlog import request_id
from mediasearch.rpc import REQUEST_ID_KEY, AsyncErrorInterceptor

RAISE: dict[str, BaseException | None] = {"exc": None}


async def _handler(request: bytes, context: Any) -> bytes:
    logging.getLogger("test.handler").info("handling")
    exc = RAISE["exc"]
    if exc is not None:
        raise exc
    return request_id.get().encode()


async def _call(exc: BaseException | None, metadata: tuple[tuple[str, str], ...] = ()) -> tuple[Any, ...]:
    RAISE["exc"] = exc
    seen: list[tuple[str, grpc.StatusCode]] = []
    server = grpc.aio.server(interceptors=[AsyncErrorInterceptor(lambda m, c, s: seen.append((m, c)))])
    handler = grpc.method_handlers_generic_handler(
        "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(_handler)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.T/Echo")(b"x", metadata=metadata, timeout=5)
            try:
                reply = await call
                return grpc.StatusCode.OK, reply.decode(), seen, await call.trailing_metadata()
            except grpc.aio.AioRpcError as err:
                return err.code(), err.details(), seen, err.trailing_metadata()
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidInput("text is empty"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ImageError("cannot decode image"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("no image 3"), grpc.StatusCode.NOT_FOUND),
        (errors.Unavailable("encoder down"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("too slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Overloaded("busy"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_project_errors_map_to_their_status_with_the_message(exc: Exception, code: grpc.StatusCode) -> None:
    got, details, seen, _ = asyncio.run(_call(exc))
    assert got == code and details == str(exc)
    assert seen == [("Echo", code)]


def test_unknown_error_is_internal_logged_with_request_id_and_not_leaked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        code, details, seen, _ = asyncio.run(
            _call(KeyError("secret-table-name"), ((REQUEST_ID_KEY, "rid-42"),))
        )
    assert code == grpc.StatusCode.INTERNAL
    assert details == "internal error (request id rid-42)" and "secret" not in details
    assert "secret-table-name" in caplog.text and seen == [("Echo", grpc.StatusCode.INTERNAL)]


def test_request_id_is_set_for_the_handler_and_echoed_in_trailing_metadata() -> None:
    code, body, _, trailing = asyncio.run(_call(None, ((REQUEST_ID_KEY, "abc"),)))
    assert code == grpc.StatusCode.OK and body == "abc"
    assert (REQUEST_ID_KEY, "abc") in tuple(trailing)
    code, body, _, _ = asyncio.run(_call(None))
    assert len(body) == 16  # a new one when the caller sent none
