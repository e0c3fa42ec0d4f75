"""The boundary with tritonclient: error translation, retries, and the served-model check.

tritonclient reports every failure as ``InferenceServerException`` with a gRPC status string; here it
becomes the project's tree, naming the Triton address so an operator knows where to look:

- ``UNAVAILABLE`` (server down, connection refused) -> :class:`Unavailable`, retried with backoff
  while the call's deadline allows (a Triton pod restarting is the common case);
- a model that is unknown or not ready -> :class:`Unavailable` naming the model;
- ``DEADLINE_EXCEEDED`` -> :class:`DeadlineExceeded`; ``RESOURCE_EXHAUSTED`` -> :class:`Overloaded`;
- anything else (a malformed request) -> :class:`ModelError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from mediasearch.errors import (
    DeadlineExceeded,
    ManifestMismatch,
    MediaSearchError,
    ModelError,
    Overloaded,
    Unavailable,
)
from mediasearch.model_manifest import VERSION_PARAMETER, ServingSpec, TensorSpec

T = TypeVar("T")


def translate(exc: InferenceServerException, url: str, what: str, timeout_s: float) -> MediaSearchError:
    """The project error for a tritonclient failure of ``what`` (e.g. "infer clip_text")."""
    status = str(exc.status() or "")
    message = str(exc.message() or exc)
    lowered = message.lower()
    if status.endswith("DEADLINE_EXCEEDED"):
        return DeadlineExceeded(f"Triton at {url} did not answer {what} within {timeout_s:.2f}s")
    if status.endswith("UNAVAILABLE") and "not ready" not in lowered:
        return Unavailable(f"Triton at {url} is unavailable ({what}): {message}")
    if status.endswith("RESOURCE_EXHAUSTED"):
        return Overloaded(f"Triton at {url} is overloaded ({what}): {message}")
    if status.endswith("NOT_FOUND") or "unknown model" in lowered or "not ready" in lowered:
        return Unavailable(f"{what}: the model is not loaded on Triton at {url}: {message}")
    return ModelError(f"Triton at {url} failed {what}: {status} {message}")


async def call_with_retries(
    fn: Callable[[float], Awaitable[T]],
    *,
    url: str,
    what: str,
    timeout_s: float,
    retries: int,
    backoff_s: float,
) -> T:
    """``await fn(remaining_seconds)``, translated, retrying :class:`Unavailable` within the deadline."""
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"Triton at {url} did not answer {what} within {timeout_s:.2f}s")
        try:
            return await fn(remaining)
        except InferenceServerException as exc:
            error = translate(exc, url, what, timeout_s)
            pause = backoff_s * (2**attempt)
            if not _retryable(error) or attempt >= retries or pause >= deadline - time.monotonic():
                raise error from exc
        attempt += 1
        await asyncio.sleep(pause)


def _retryable(error: MediaSearchError) -> bool:
    """Unavailable is retried, "model not loaded" included: a Triton that is stopping unloads its
    models first and answers "unknown model" for seconds; with several Tritons behind the channel
    (round robin) the retry reaches one that serves. A model that is never loaded costs the
    retries' backoff (0.35 s at the defaults) before the error."""
    return type(error) is Unavailable


def config_differences(config: Any, spec: ServingSpec, version: str) -> list[str]:
    """How a served ``ModelConfig`` differs from the manifest's spec and version (empty: it matches)."""
    problems = []
    served_version = (
        config.parameters[VERSION_PARAMETER].string_value if VERSION_PARAMETER in config.parameters else ""
    )
    if served_version != version:
        problems.append(f"model version {served_version or '(none)'} != manifest version {version}")
    if config.max_batch_size != spec.max_batch_size:
        problems.append(f"max_batch_size {config.max_batch_size} != {spec.max_batch_size}")
    for kind, served, expected in (
        ("input", config.input, spec.inputs),
        ("output", config.output, spec.outputs),
    ):
        got = [_served_tensor(t) for t in served]
        want = [_describe(t) for t in expected]
        if got != want:
            problems.append(f"{kind}s {got} != manifest {want}")
    return problems


def _served_tensor(tensor: Any) -> str:
    dtype = mc.DataType.Name(tensor.data_type).removeprefix("TYPE_")
    return _describe(TensorSpec(tensor.name, dtype, tuple(tensor.dims)))


def _describe(t: TensorSpec) -> str:
    return f"{t.name}:{t.dtype}{list(t.dims)}"


def mismatch(url: str, spec: ServingSpec, problems: list[str], repository: str) -> ManifestMismatch:
    return ManifestMismatch(
        f"Triton at {url} serves a {spec.model} that differs from the manifest in {repository}: "
        f"{'; '.join(problems)}. Point Triton and this service at the same export (re-run "
        "`mediasearch export`, then restart or reload Triton)."
    )
