"""Tags of S3 objects, from their user metadata (``x-amz-meta-tags``), through the whole path:
moto's S3, the indexer (backfill), PostgreSQL, and the gateway's tag filters. The folder sidecar
path is in tests/unit/test_indexer_tags.py."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from mediasearch.client import SearchClient
from mediasearch.dev.emulated_aws import NotifyingBucket
from mediasearch.indexer.backfill import backfill
from mediasearch.metadata.models import INDEXED, REMOVED
from tests.support.index import sessions_for
from tests.support.indexer import indexer_settings, rows, scene_bytes

TAGS = {
    "sunset-1.jpg": "beach, Sunset,beach",
    "sunset-2.jpg": " SUNSET ",
    "city.jpg": "city,night",
    "plain.jpg": None,
    "empty.jpg": " , ,",
}


@pytest.mark.usefixtures("aws_env")
def test_s3_metadata_tags_are_indexed_and_filtered_on_and_a_new_version_brings_its_own(
    endpoint: str, tmp_path: Path, tiny_repository: Path, postgres_url: str
) -> None:
    from mediasearch.gateway.app import BackgroundGateway

    bucket = NotifyingBucket.create(endpoint, f"tags-{uuid.uuid4().hex[:8]}", notify=False)
    for i, (key, tags) in enumerate(TAGS.items()):
        metadata = {"Metadata": {"tags": tags}} if tags is not None else {}
        bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=scene_bytes(i), **metadata)
    settings = indexer_settings(tmp_path, tiny_repository, postgres_url, s3_endpoint_url=endpoint)

    report = backfill(settings, f"s3://{bucket.name}/")

    assert (report.indexed, report.failed) == (5, 0)
    sessions = sessions_for(settings.database_url)
    live = {r.key: r for r in rows(sessions) if r.status == INDEXED}
    assert {k: r.tags for k, r in live.items()} == {
        "sunset-1.jpg": ["beach", "sunset"],
        "sunset-2.jpg": ["sunset"],
        "city.jpg": ["city", "night"],
        "plain.jpg": [],
        "empty.jpg": [],
    }

    old_city = live["city.jpg"].id
    bucket.s3.put_object(
        Bucket=bucket.name, Key="city.jpg", Body=scene_bytes(50), Metadata={"tags": "City,Sunset"}
    )
    assert backfill(settings, f"s3://{bucket.name}/").indexed == 1
    by_key = {r.key: r for r in rows(sessions) if r.status == INDEXED}
    assert by_key["city.jpg"].tags == ["city", "sunset"] and by_key["city.jpg"].id != old_city
    assert next(r for r in rows(sessions) if r.id == old_city).status == REMOVED

    gateway = BackgroundGateway(settings.with_overrides(gateway_metrics_port=0), 0, http_port=-1)
    gateway.start()
    try:
        with SearchClient(gateway.address) as client:
            client.wait_ready()

            def found(**filters: list[str]) -> set[str]:
                return {r.key for r in client.search_text("a picture", top_k=10, **filters).results}

            assert found() == set(TAGS)
            assert found(tags_any=["sunset"]) == {"sunset-1.jpg", "sunset-2.jpg", "city.jpg"}
            assert found(tags_all=["beach", "sunset"]) == {"sunset-1.jpg"}
            assert found(tags_any=["night"]) == set()  # the old version's tag went with it
    finally:
        gateway.stop()
