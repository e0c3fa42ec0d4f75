"""Real servers for the integration tier, started on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mediasearch.dev.emulated_aws import ENV, moto_server
from mediasearch.dev.triton import LocalTriton, TritonOptions
from tests.support.gateway_stack import stack  # noqa: F401 - the gateway tests' cluster (module scope)


@pytest.fixture(scope="session")
def triton_server(tiny_repository: Path) -> Iterator[LocalTriton]:
    """``tritonserver`` (the nvidia-pytriton binary, CPU flavour) over the tiny exported model.

    One ONNX Runtime thread per model keeps it from competing with the test process on small CI
    machines; it is stopped (and its shared memory removed) at the end of the session.
    """
    with LocalTriton(TritonOptions(tiny_repository, ort_threads=1)) as server:
        yield server


@pytest.fixture(scope="module")
def module_endpoint() -> Iterator[str]:
    """One moto server shared by a module's tests (they use buckets and queues of their own)."""
    with moto_server() as url:
        yield url


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator's keys and region in this process's environment (what boto3 reads)."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
