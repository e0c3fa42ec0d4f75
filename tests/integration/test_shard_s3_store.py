"""The S3 segment store against moto in server mode (a real HTTP endpoint on loopback)."""

from __future__ import annotations

from pathlib import Path

import boto3
import numpy as np
import pytest

from mediasearch.dev.processes import free_port
from mediasearch.errors import NotFound, Unavailable
from mediasearch.metadata.segment_manifest import SegmentRecord, ShardManifest
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.s3store import S3Store
from mediasearch.vector_index.segment import read_meta, write_segment
from mediasearch.vector_index.shard import SearchParams, Shard
from mediasearch.vector_index.store import open_store
from tests.support.index import MODEL, brute_force, unit_vectors


@pytest.fixture(scope="module")
def endpoint(module_endpoint: str) -> str:
    return module_endpoint


@pytest.fixture
def store(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    bucket = f"segments-{tmp_path.name.lower().replace('_', '-')[:40]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    s = open_store(f"s3://{bucket}/index/v1", cache_dir=tmp_path / "cache", endpoint_url=endpoint)
    assert isinstance(s, S3Store)
    return s


def test_s3_segment_round_trip_is_verified_and_searchable(store: S3Store, tmp_path: Path) -> None:
    x, ids = unit_vectors(800, seed=1), np.arange(800, dtype=np.int64) + 5
    meta = write_segment(tmp_path / "w", x, ids, shard=1, model_version=MODEL, config=BuildConfig.defaults())
    uri = store.put(tmp_path / "w", meta)
    assert uri == f"s3://{store.bucket}/index/v1/{meta.segment_id}"
    listed = store.list()
    assert [(e.segment_id, e.complete) for e in listed] == [(meta.segment_id, True)]
    shard = Shard(1, store)
    shard.apply(ShardManifest(1, (SegmentRecord.from_meta(meta, uri),), np.empty(0, np.int64), (0, 0)))
    q = unit_vectors(5, seed=2)
    np.testing.assert_array_equal(
        shard.search(q, SearchParams.defaults(k=5))[1], brute_force(x, ids, q, 5)[1]
    )
    assert read_meta(shard.view.segments[0].folder).model_version == MODEL


def test_s3_listing_reports_an_interrupted_upload_as_incomplete_and_delete_removes_it(
    store: S3Store, tmp_path: Path
) -> None:
    meta = write_segment(tmp_path / "w", unit_vectors(10), np.arange(10), shard=0, model_version=MODEL,
                         config=BuildConfig.defaults())  # fmt: skip
    key = f"{store.prefix}/{meta.segment_id}/ids.npy"
    store._client.upload_file(str(tmp_path / "w" / "ids.npy"), store.bucket, key)  # killed after one file
    assert [(e.segment_id, e.complete) for e in store.list()] == [(meta.segment_id, False)]
    store.delete(f"s3://{store.bucket}/{store.prefix}/{meta.segment_id}")
    assert store.list() == []
    with pytest.raises(NotFound):
        store.open(f"s3://{store.bucket}/{store.prefix}/{meta.segment_id}")


def test_unreachable_s3_is_reported_as_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    store = S3Store("b", "p", cache_dir=tmp_path, endpoint_url=f"http://127.0.0.1:{free_port()}")
    store._client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(Unavailable):
        store.list()
