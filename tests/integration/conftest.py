"""Real servers for the integration tier, started once per session on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mediasearch.triton import LocalTriton, TritonOptions


@pytest.fixture(scope="session")
def triton_server(tiny_repository: Path) -> Iterator[LocalTriton]:
    """``tritonserver`` (the nvidia-pytriton binary, CPU flavour) over the tiny exported model.

    One ONNX Runtime thread per model keeps it from competing with the test process on small CI
    machines; it is stopped (and its shared memory removed) at the end of the session.
    """
    with LocalTriton(TritonOptions(tiny_repository, ort_threads=1)) as server:
        yield server
