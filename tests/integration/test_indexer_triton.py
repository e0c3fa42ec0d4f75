"""The SQS indexer encoding through a real tritonserver: the vectors it publishes are the ones the
in-process encoder computes, and each image is found by its own embedding."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest

from mediasearch.dev.emulated_aws import NotifyingBucket
from mediasearch.dev.triton import LocalTriton
from mediasearch.encoders import LocalEncoder
from mediasearch.indexer.worker import arun_worker
from mediasearch.metadata.models import INDEXED
from mediasearch.metadata.segment_manifest import load_shard_manifest
from mediasearch.vector_index.segment import load_vectors
from tests.support.index import sessions_for
from tests.support.indexer import (
    bucket_settings,
    indexer_settings,
    rows,
    scene_bytes,
    search_ids,
    store_of,
)


@pytest.mark.usefixtures("aws_env")
def test_sqs_indexer_with_triton_publishes_the_local_encoders_vectors_and_finds_each_image(
    endpoint: str, triton_server: LocalTriton, tiny_repository: Path, tmp_path: Path, postgres_url: str
) -> None:
    name = f"triton-{uuid.uuid4().hex[:8]}"
    bucket = NotifyingBucket.create(endpoint, name, also=(f"{name}-segments",))
    images = {f"t/{i}.jpg": scene_bytes(i, size=96) for i in range(20)}
    for key, data in images.items():
        bucket.put(key, data)
    database_url = postgres_url
    settings = indexer_settings(
        tmp_path, tiny_repository, database_url, encoder="triton", triton_grpc_url=triton_server.grpc_url,
        **bucket_settings(bucket),
    )  # fmt: skip
    report = asyncio.run(arun_worker(settings, idle_exit_s=1.5))
    assert (report.indexed, report.failed, report.retried) == (20, 0, 0)

    async def local() -> np.ndarray:
        async with LocalEncoder(tiny_repository) as enc:
            return (await enc.encode_images(list(images.values()))).raise_first()

    want = dict(zip(images, asyncio.run(local()), strict=True))
    sessions = sessions_for(database_url)
    ids = {r.id: r.key for r in rows(sessions) if r.status == INDEXED}
    store = store_of(settings)
    got: dict[str, np.ndarray] = {}
    for shard in range(settings.num_shards):
        with sessions() as s:
            for record in load_shard_manifest(s, shard).segments:
                seg_ids, vectors = load_vectors(store.open(record.uri))
                got.update({ids[int(i)]: np.array(v) for i, v in zip(seg_ids, vectors, strict=True)})
    assert sorted(got) == sorted(images)
    assert max(float(np.abs(got[k] - want[k]).max()) for k in images) <= 1e-5
    by_key = {v: k for k, v in ids.items()}
    for key in list(images)[:5]:
        assert search_ids(sessions, store, settings.num_shards, want[key], k=1) == [by_key[key]]
