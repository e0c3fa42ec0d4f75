"""The tritonclient boundary without a server: error translation and the served-config check."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from tritonclient.utils import InferenceServerException

from mediasearch.encoders._triton_rpc import (
    call_with_retries,
    config_differences,
    translate,
)
from mediasearch.errors import DeadlineExceeded, ModelError, Overloaded, Unavailable
from mediasearch.model_manifest import ServingSpec, TensorSpec

URL = "10.1.2.3:8001"
SPEC = ServingSpec(
    model="clip_text",
    inputs=(TensorSpec("input_ids", "INT64", (-1,)),),
    outputs=(TensorSpec("embedding", "FP32", (16,)),),
    max_batch_size=64,
    preferred_batch_sizes=(8, 16, 32),
    max_queue_delay_us=2000,
)


def error(status: str, msg: str = "boom") -> InferenceServerException:
    return InferenceServerException(msg=msg, status=f"StatusCode.{status}")


@pytest.mark.parametrize(
    ("status", "message", "kind", "says"),
    [
        ("UNAVAILABLE", "failed to connect to all addresses", Unavailable, "unavailable"),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceeded, "within 1.50s"),
        ("RESOURCE_EXHAUSTED", "queue full", Overloaded, "overloaded"),
        ("NOT_FOUND", "Request for unknown model", Unavailable, "not loaded"),
        ("UNAVAILABLE", "Request for unknown model: 'clip_text' is not ready", Unavailable, "not loaded"),
        ("INVALID_ARGUMENT", "unexpected shape", ModelError, "INVALID_ARGUMENT"),
    ],
)
def test_translate_maps_tritonclient_errors_into_the_project_tree_naming_the_address(
    status: str, message: str, kind: type, says: str
) -> None:
    err = translate(error(status, message), URL, "infer clip_text", 1.5)
    assert type(err) is kind
    assert URL in str(err) and says in str(err)


def test_call_retries_unavailable_then_raises_it_naming_the_address_when_triton_stays_down() -> None:
    attempts = 0

    async def down(remaining: float) -> None:
        nonlocal attempts
        attempts += 1
        raise error("UNAVAILABLE", "connection refused")

    async def body() -> None:
        with pytest.raises(Unavailable, match=URL):
            await call_with_retries(down, url=URL, what="infer", timeout_s=5, retries=2, backoff_s=0.001)

    asyncio.run(body())
    assert attempts == 3


def test_call_succeeds_when_triton_comes_back_within_the_retries() -> None:
    attempts = 0

    async def flaky(remaining: float) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise error("UNAVAILABLE")
        return "ok"

    result = asyncio.run(call_with_retries(flaky, url=URL, what="x", timeout_s=5, retries=3, backoff_s=0.001))
    assert result == "ok" and attempts == 3


def test_call_does_not_retry_a_model_error() -> None:
    attempts = 0

    async def bad(remaining: float) -> None:
        nonlocal attempts
        attempts += 1
        raise error("INVALID_ARGUMENT")

    with pytest.raises(ModelError):
        asyncio.run(call_with_retries(bad, url=URL, what="x", timeout_s=5, retries=3, backoff_s=0.001))
    assert attempts == 1


@pytest.mark.parametrize("flavour", ["gpu", "cpu", "tensorrt"])
def test_generated_config_matches_its_spec_in_every_flavour(flavour: str) -> None:
    from mediasearch.export.triton_config import Flavour, model_config

    cfg = model_config(SPEC, Flavour(flavour), version="clip-abc", pad_id=49407)
    assert config_differences(cfg, SPEC, "clip-abc") == []


def test_config_differences_name_version_and_tensor_mismatches() -> None:
    from mediasearch.export.triton_config import Flavour, model_config

    served = replace(SPEC, inputs=(TensorSpec("input_ids", "INT32", (-1,)),), max_batch_size=8)
    cfg = model_config(served, Flavour.CPU, version="clip-old")
    problems = " | ".join(config_differences(cfg, SPEC, "clip-new"))
    assert "clip-old" in problems and "clip-new" in problems
    assert "input_ids:INT32[-1]" in problems and "max_batch_size 8 != 64" in problems


def test_a_model_being_unloaded_is_retried_so_another_triton_behind_the_channel_answers() -> None:
    attempts = 0

    async def stopping_then_other(remaining: float) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:  # the Triton that is shutting down has unloaded its models
            raise error("UNAVAILABLE", "Request for unknown model: 'clip_text' is not ready")
        return "vectors"

    got = asyncio.run(
        call_with_retries(stopping_then_other, url=URL, what="x", timeout_s=5, retries=3, backoff_s=0.001)
    )
    assert (got, attempts) == ("vectors", 2)
