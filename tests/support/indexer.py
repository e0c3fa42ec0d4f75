"""Helpers shared by the indexer tests: settings, a corpus of bad inputs, and index inspection."""

from __future__ import annotations

import io
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.dev.crafted_images import png
from mediasearch.dev.emulated_aws import NotifyingBucket
from mediasearch.export.micro.scenes.gallery import encode_scene, scene_rng
from mediasearch.export.micro.scenes.render import render_scene
from mediasearch.metadata.models import ImageRow
from mediasearch.metadata.segment_manifest import load_shard_manifest
from mediasearch.settings import Settings, load_settings
from mediasearch.vector_index.segment import load_vectors
from mediasearch.vector_index.shard import SearchParams, Shard
from mediasearch.vector_index.store import SegmentStore, store_from_settings

MAX_BYTES = 200_000
MAX_PIXELS = 1_000_000


def indexer_settings(
    tmp: Path, repository: Path, database_url: str | None = None, **extra: object
) -> Settings:
    values: dict[str, object] = {
        "model_repository": repository,
        "database_url": database_url or f"sqlite:///{tmp / 'meta.db'}",
        "segment_store_url": (tmp / "segments").as_uri(),
        "segment_cache_dir": tmp / "cache",
        "max_image_bytes": MAX_BYTES,
        "max_image_pixels": MAX_PIXELS,
        "indexer_batch_size": 8,
        "indexer_batch_wait_ms": 20,
        "indexer_fetch_concurrency": 4,
        "num_shards": 2,
    }
    return load_settings(**(values | extra))


def scene_bytes(index: int, seed: int = 11, size: int = 64, fmt: str = "jpeg") -> bytes:
    img, _ = render_scene(scene_rng(seed, index), size)
    return encode_scene(img, "jpeg" if fmt == "jpeg" else "png")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (a decompression bomb's shape)."""
    return png(width, height, zlib.compress(b"\0" * 64))


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """``{file name: (bytes, a word the recorded error must contain)}``."""
    good = scene_bytes(0)
    png = scene_bytes(1, fmt="png")
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    big = io.BytesIO()
    Image.fromarray(noise).save(big, "PNG")  # ~480 kB > MAX_BYTES
    assert len(big.getvalue()) > MAX_BYTES
    return {
        "empty.jpg": (b"", "empty"),
        "text.jpg": (b"hello, I am not a picture\n" * 10, "not an image"),
        "page.png": (b"<!doctype html><html><body>404</body></html>", "not an image"),
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
        "truncated.png": (png[:200], "truncated"),
        "random.png": (np.random.default_rng(1).bytes(5000), "not an image"),
        "oversized.png": (big.getvalue(), "too large"),
        "bomb.png": (_png_header_only(20_000, 20_000), "bomb"),
    }


def rows(sessions: sessionmaker[Session]) -> list[ImageRow]:
    with sessions() as s:
        return list(s.scalars(select(ImageRow).order_by(ImageRow.id)))


def store_of(settings: Settings) -> SegmentStore:
    return store_from_settings(settings, "test")


def served_ids(sessions: sessionmaker[Session], store: SegmentStore, num_shards: int) -> Counter[int]:
    """How many times each id is served: in a live segment and not tombstoned, over all shards."""
    served: Counter[int] = Counter()
    for shard in range(num_shards):
        with sessions() as s:
            manifest = load_shard_manifest(s, shard)
        for record in manifest.segments:
            folder = store.open(record.uri)
            ids, _ = load_vectors(folder)
            served.update(int(i) for i in ids if i not in set(manifest.tombstones.tolist()))
            store.release(record.uri, folder)
    return served


def search_ids(
    sessions: sessionmaker[Session], store: SegmentStore, num_shards: int, vector: np.ndarray, k: int = 5
) -> list[int]:
    """Top-k ids for ``vector`` over every shard (what a router would return)."""
    hits: list[tuple[float, int]] = []
    for shard_id in range(num_shards):
        shard = Shard(shard_id, store)
        with sessions() as s:
            shard.apply(load_shard_manifest(s, shard_id))
        scores, ids = shard.search(vector.reshape(1, -1).astype(np.float32), SearchParams.defaults(k=k))
        hits.extend((float(sc), int(i)) for sc, i in zip(scores[0], ids[0], strict=True) if i >= 0)
        shard.close()
    return [i for _, i in sorted(hits, key=lambda h: (-h[0], h[1]))[:k]]


def bucket_settings(bucket: NotifyingBucket) -> dict[str, object]:
    """Settings of an indexer consuming ``bucket``'s events, segments in ``<bucket>-segments``
    (create the bucket with ``also=(f"{name}-segments",)``), with short SQS timings for tests."""
    return {
        "s3_endpoint_url": bucket.endpoint,
        "segment_store_url": f"s3://{bucket.name}-segments/index",
        "indexer_queue_url": bucket.queue_url,
        "indexer_dlq_url": bucket.dlq_url,
        "indexer_wait_time_s": 1,
        "indexer_visibility_timeout_s": 5,
        "indexer_retry_delay_s": 0,
    }
