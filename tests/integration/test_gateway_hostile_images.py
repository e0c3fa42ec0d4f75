"""Hostile images against a real embedded gateway (`mediasearch serve`, security issue 14).

The gateway runs as its own process (in-process shards, SQLite, the micro CLIP on ONNX Runtime)
over a few hundred published vectors. Small hostile images (a 1 x 60,000,000 PNG, a 74-byte PNG
declaring as much, a PNG decompression bomb, a truncated PNG, JPEG header floods, a JPEG whose scan
ends long before its 64 Mpx) are sent over and over from several threads while ordinary SearchText
calls run: each hostile call must be INVALID_ARGUMENT within a second, and the ordinary calls must
keep their latency (the median under load within 3x the median without it).
"""

from __future__ import annotations

import statistics
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from mediasearch._proto.mediasearch.v1 import search_pb2, search_pb2_grpc
from mediasearch.dev.crafted_images import jpeg_header, png, png_chunk, zeros_zlib
from mediasearch.dev.processes import start_gateway
from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.model_manifest import ModelManifest
from mediasearch.vector_index.store import LocalFolderStore
from tests.support.gateway import publish_images

QUERIES = [f"{colour} {shape}" for colour in ("red", "green", "blue") for shape in ("circle", "square")]


def _hostile() -> dict[str, bytes]:
    small_jpeg = jpeg_header(64, 64) + bytes(64) + b"\xff\xd9"
    return {
        "1x60M_png": png(1, 60_000_000, zeros_zlib(2 * 60_000_000), depth=1, colour=0),
        "1x60M_png_74_bytes": png(1, 60_000_000, zlib.compress(bytes(1000))),
        "png_bomb_400Mpx": png(20_000, 20_000, zlib.compress(bytes(100_000))),
        "png_truncated_49Mpx": png(7000, 7000, zlib.compress(bytes(1000))),
        "png_chunk_flood": png(8, 8, zlib.compress(bytes(200)), extra=png_chunk(b"abCd", b"") * 20_000),
        "jpeg_soi_then_4MB_ff": b"\xff\xd8" + b"\xff" * 4_000_000 + small_jpeg[2:],
        "jpeg_comment_flood": b"\xff\xd8" + b"\xff\xfe\x00\x02" * 1_000_000 + small_jpeg[2:],
        "jpeg_64Mpx_then_2MB_zeros": jpeg_header(8000, 8000) + bytes(2_000_000),
    }


@dataclass
class Gateway:
    stub: search_pb2_grpc.SearchServiceStub
    log: Path


@pytest.fixture(scope="module")
def gateway(micro_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("hostile")
    url = f"sqlite:///{tmp / 'mediasearch.db'}"
    engine = make_engine(url)
    migrate(engine)
    manifest = ModelManifest.load(micro_repository, "clip")
    vectors = np.random.default_rng(0).standard_normal((300, manifest.embedding_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [
        dict(bucket="local", key=f"img{i}.png", content_type="image/png", width=64, height=64)
        for i in range(300)
    ]
    publish_images(
        session_factory(engine), LocalFolderStore(tmp / "segments"), vectors, rows,
        num_shards=1, model_version=manifest.version,
    )  # fmt: skip
    engine.dispose()
    env = {
        "MEDIASEARCH_DATABASE_URL": url,
        "MEDIASEARCH_SEGMENT_STORE_URL": (tmp / "segments").as_uri(),
        "MEDIASEARCH_SEGMENT_CACHE_DIR": str(tmp / "cache"),
        "MEDIASEARCH_MODEL_REPOSITORY": str(micro_repository),
        "MEDIASEARCH_ENCODER": "local",
    }
    child, port, _ = start_gateway("gateway", env, tmp)
    channel = None
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        yield Gateway(search_pb2_grpc.SearchServiceStub(channel), tmp / "gateway.log")
    finally:
        if channel is not None:
            channel.close()
        child.stop()


def _search_text_latencies(stub: search_pb2_grpc.SearchServiceStub, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        response = stub.SearchText(
            search_pb2.SearchTextRequest(text=QUERIES[i % len(QUERIES)], top_k=10), timeout=10
        )
        latencies.append(time.perf_counter() - started)
        assert len(response.results) == 10
    return latencies


def _send_until(
    stub: search_pb2_grpc.SearchServiceStub, images: list[tuple[str, bytes]], stop: threading.Event,
    record: Callable[[str, float, grpc.StatusCode], None],
) -> None:  # fmt: skip
    i = 0
    while not stop.is_set() or i < len(images):  # every image at least once
        name, data = images[i % len(images)]
        started = time.perf_counter()
        try:
            stub.SearchImage(search_pb2.SearchImageRequest(image=data, top_k=10), timeout=5)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        record(name, time.perf_counter() - started, code)
        i += 1
        time.sleep(0.02)  # a steady stream, not a flood of the event loop


@contextmanager
def _hostile_stream(
    stub: search_pb2_grpc.SearchServiceStub, record: Callable[[str, float, grpc.StatusCode], None]
) -> Iterator[None]:
    """Two threads sending the hostile images over and over, each from another one on: as many
    as the 2-core test machine has cores, so the stream is steady but does not by itself saturate
    the host (with four, the ratio measured the host's speed: 4-5x on a slow day, 1.6x on others)."""
    hostile, stop = list(_hostile().items()), threading.Event()
    senders = [
        threading.Thread(
            target=_send_until, args=(stub, hostile[k:] + hostile[:k], stop, record), daemon=True
        )
        for k in range(0, len(hostile), len(hostile) // 2)
    ]
    for sender in senders:
        sender.start()
    try:
        time.sleep(0.1)
        yield
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=120)


def test_hostile_images_are_refused_fast_while_ordinary_searches_keep_their_latency(gateway: Gateway) -> None:
    stub = gateway.stub
    _search_text_latencies(stub, 10)  # warm up
    calls: list[tuple[str, float, grpc.StatusCode]] = []
    lock = threading.Lock()

    def record(name: str, seconds: float, code: grpc.StatusCode) -> None:
        with lock:
            calls.append((name, seconds, code))

    quiet: list[float] = []
    loaded: list[float] = []
    for _ in range(3):  # alternating rounds: a burst of outside load does not land on one side only
        quiet += _search_text_latencies(stub, 20)
        with _hostile_stream(stub, record):
            loaded += _search_text_latencies(stub, 20)

    assert {name for name, _, _ in calls} == set(_hostile())
    wrong = [(name, code) for name, _, code in calls if code != grpc.StatusCode.INVALID_ARGUMENT]
    assert not wrong, wrong
    slowest = max(calls, key=lambda c: c[1])
    assert slowest[1] < 1.0, f"{slowest[0]} took {slowest[1]:.2f} s"  # measured: under 0.1 s
    p50_quiet, p50_loaded = statistics.median(quiet), statistics.median(loaded)
    assert p50_loaded < 3 * p50_quiet, (
        f"SearchText p50 {p50_loaded * 1e3:.1f} ms under load, {p50_quiet * 1e3:.1f} without"
    )


def test_hostile_image_refusals_say_which_limit(gateway: Gateway) -> None:
    messages = {}
    for name, data in _hostile().items():
        with pytest.raises(grpc.RpcError) as info:
            gateway.stub.SearchImage(search_pb2.SearchImageRequest(image=data, top_k=10), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        messages[name] = info.value.details()
    assert "max_image_aspect = 500" in messages["1x60M_png"]
    assert "max_image_pixels = 64000000" in messages["png_bomb_400Mpx"]
    assert "truncated PNG" in messages["png_truncated_49Mpx"]
    assert "padded with over 65536 bytes" in messages["jpeg_soi_then_4MB_ff"]
