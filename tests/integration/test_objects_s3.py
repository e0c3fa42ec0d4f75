"""Reading users' images from S3 (moto): versions by If-Match, gone objects, size limits, tags."""

from __future__ import annotations

import pytest

from mediasearch.dev.emulated_aws import NotifyingBucket
from mediasearch.dev.emulated_aws import client as emulator_client
from mediasearch.errors import Conflict, NotFound
from mediasearch.objects import S3Objects


@pytest.fixture
def bucket(endpoint: str) -> NotifyingBucket:
    return NotifyingBucket.create(endpoint, "photos", notify=False)


def test_an_object_is_read_with_its_etag_and_attributes(bucket: NotifyingBucket) -> None:
    etag = bucket.put("a/x.jpg", b"jpeg bytes", "image/jpeg")
    got = S3Objects(emulator_client("s3", bucket.endpoint), max_bytes=100).get(
        "photos", "a/x.jpg", if_match=etag
    )
    assert (got.data, got.etag, got.size, got.content_type) == (b"jpeg bytes", etag, 10, "image/jpeg")
    assert got.modified is not None


def test_a_newer_version_is_a_conflict_and_a_deleted_object_not_found(bucket: NotifyingBucket) -> None:
    objects = S3Objects(emulator_client("s3", bucket.endpoint), max_bytes=100)
    old = bucket.put("k.jpg", b"first")
    new = bucket.put("k.jpg", b"second")
    with pytest.raises(Conflict, match=r"s3://photos/k\.jpg"):
        objects.get("photos", "k.jpg", if_match=old)
    assert objects.current_etag("photos", "k.jpg") == new
    bucket.s3.delete_object(Bucket="photos", Key="k.jpg")
    with pytest.raises(NotFound, match=r"s3://photos/k\.jpg"):
        objects.get("photos", "k.jpg")
    assert objects.current_etag("photos", "k.jpg") is None


def test_an_object_over_the_limit_is_not_downloaded(bucket: NotifyingBucket) -> None:
    bucket.put("big.jpg", b"x" * 101)
    got = S3Objects(emulator_client("s3", bucket.endpoint), max_bytes=100).get("photos", "big.jpg")
    assert got.data is None and got.size == 101 and "too large" in (got.error or "")


def test_an_objects_tags_come_from_its_user_metadata_in_the_same_get(bucket: NotifyingBucket) -> None:
    bucket.s3.put_object(Bucket="photos", Key="t.jpg", Body=b"jpeg", Metadata={"tags": "beach, Sunset,beach"})
    bucket.s3.put_object(Bucket="photos", Key="big.jpg", Body=b"x" * 101, Metadata={"tags": "Big"})
    bucket.put("plain.jpg", b"jpeg")
    objects = S3Objects(emulator_client("s3", bucket.endpoint), max_bytes=100)
    assert objects.get("photos", "t.jpg").tags == ("beach", "sunset")
    assert objects.get("photos", "big.jpg").tags == ("big",)  # not downloaded, tags still known
    assert objects.get("photos", "plain.jpg").tags == ()
