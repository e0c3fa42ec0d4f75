"""Every input the fuzzers found a crash with (``tests/fuzz_corpus/regressions/<target>/``) now gets
a defined outcome within the fuzzing limits (memory, time per input), replayed through its target
under libFuzzer; and a request that is no valid message gets INVALID_ARGUMENT, not UNKNOWN."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from mediasearch._proto.mediasearch.v1 import search_pb2
from mediasearch.dev.fuzz import CORPUS, TARGET_NAMES, Outcome, replay_files
from mediasearch.rpc import AsyncErrorInterceptor

REGRESSIONS = CORPUS / "regressions"


def regression_files() -> list[Path]:
    return sorted(p for target in TARGET_NAMES for p in (REGRESSIONS / target).glob("*") if p.is_file())


def _param(path: Path) -> Any:
    return pytest.param(path, id=f"{path.parent.name}/{path.name}")


@pytest.fixture(scope="module")
def outcomes() -> dict[Path, Outcome]:
    found: dict[Path, Outcome] = {}
    for target in TARGET_NAMES:
        files = [p for p in regression_files() if p.parent.name == target]
        if files:
            found.update(replay_files(target, files))
    return found


def test_every_target_has_regressions_and_every_file_a_target() -> None:
    folders = {p.name for p in REGRESSIONS.iterdir()}
    assert folders == set(TARGET_NAMES)


@pytest.mark.parametrize("path", [_param(p) for p in regression_files()])
def test_regression_input_gets_a_defined_outcome_within_the_limits(
    path: Path, outcomes: dict[Path, Outcome]
) -> None:
    outcome = outcomes[path.resolve()]
    assert not outcome.problem, f"{outcome.problem}\n{outcome.log}"


# -- the gRPC layer: a request that fails to parse ------------------------------------------------
async def _echo(request: Any, context: Any) -> Any:
    return search_pb2.SearchResponse(model_version=request.text)


async def _call(payload: bytes) -> tuple[grpc.StatusCode, str, list[tuple[str, grpc.StatusCode]]]:
    seen: list[tuple[str, grpc.StatusCode]] = []
    server = grpc.aio.server(interceptors=[AsyncErrorInterceptor(lambda m, c, s: seen.append((m, c)))])
    handler = grpc.unary_unary_rpc_method_handler(
        _echo,
        request_deserializer=search_pb2.SearchTextRequest.FromString,
        response_serializer=search_pb2.SearchResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = await channel.unary_unary("/t.T/Echo")(payload, timeout=5)
                return grpc.StatusCode.OK, search_pb2.SearchResponse.FromString(reply).model_version, seen
            except grpc.aio.AioRpcError as err:
                return err.code(), err.details() or "", seen
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    "payload", [b"\xff\xff\xff", b"\x0a\x02\xff\xfe", b"\x0a\x05ab"], ids=["garbage", "bad-utf8", "cut-short"]
)
def test_a_request_that_is_no_valid_message_is_invalid_argument_logged_at_info_without_traceback(
    payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        code, details, seen = asyncio.run(_call(payload))
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the request is not a valid SearchTextRequest message",
    )
    assert seen == [("Echo", grpc.StatusCode.INVALID_ARGUMENT)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert "not a valid SearchTextRequest" in caplog.text


def test_a_valid_request_still_reaches_the_handler() -> None:
    code, text, seen = asyncio.run(_call(search_pb2.SearchTextRequest(text="hi").SerializeToString()))
    assert (code, text, seen) == (grpc.StatusCode.OK, "hi", [("Echo", grpc.StatusCode.OK)])
