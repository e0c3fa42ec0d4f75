"""Result filters over metadata records."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mediasearch.gateway.filters import Filters, filters_from_proto
from mediasearch.metadata.images_repo import ImageRecord

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _image(**kw: object) -> ImageRecord:
    base = dict(
        image_id=1, bucket="photos", key="2026/cat.jpg", etag="e", size=1, content_type="image/jpeg",
        width=10, height=10, created=T0, indexed=T0, tags=("cat", "indoor"), model_version="m",
        shard=0, status="indexed", error=None,
    )  # fmt: skip
    base.update(kw)
    return ImageRecord(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(), True),
        (Filters(tags_any=("dog", "cat")), True),
        (Filters(tags_any=("dog",)), False),
        (Filters(tags_all=("cat", "indoor")), True),
        (Filters(tags_all=("cat", "outdoor")), False),
        (Filters(content_types=("image/png",)), False),
        (Filters(content_types=("image/png", "image/jpeg")), True),
        (Filters(created_after=T0), True),  # inclusive
        (Filters(created_before=T0), False),  # exclusive
        (Filters(bucket="photos", key_prefix="2026/"), True),
        (Filters(bucket="other"), False),
        (Filters(key_prefix="2025/"), False),
    ],
)
def test_filter_matches_exactly_when_every_set_condition_holds(filters: Filters, expected: bool) -> None:
    assert filters.matches(_image()) is expected


def test_missing_content_type_never_matches_a_content_type_filter() -> None:
    assert not Filters(content_types=("image/jpeg",)).matches(_image(content_type=None))
    assert Filters().empty and not Filters(bucket="b").empty


def test_tag_filters_are_matched_as_the_indexer_stores_tags() -> None:
    from mediasearch._proto.mediasearch.v1 import search_pb2

    filters = filters_from_proto(search_pb2.Filters(tags_any=["  Sunset ", "Red  Car"], tags_all=["BEACH"]))
    assert filters.tags_any == ("sunset", "red car") and filters.tags_all == ("beach",)
