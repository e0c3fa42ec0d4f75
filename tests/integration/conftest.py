"""Real servers for the integration tier, started once per session on free loopback ports."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mediasearch.dev.processes import free_port
from mediasearch.dev.triton import LocalTriton, TritonOptions


@pytest.fixture(scope="session")
def triton_server(tiny_repository: Path) -> Iterator[LocalTriton]:
    """``tritonserver`` (the nvidia-pytriton binary, CPU flavour) over the tiny exported model.

    One ONNX Runtime thread per model keeps it from competing with the test process on small CI
    machines; it is stopped (and its shared memory removed) at the end of the session.
    """
    with LocalTriton(TritonOptions(tiny_repository, ort_threads=1)) as server:
        yield server


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 + SQS server on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def endpoint() -> Iterator[str]:
    """A fresh moto server for one test."""
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def module_endpoint() -> Iterator[str]:
    """One moto server shared by a module's tests (they use buckets and queues of their own)."""
    with moto_server() as url:
        yield url
