"""Reading users' images from a folder (the S3 reader: tests/integration/test_objects_s3.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mediasearch.errors import NotFound
from mediasearch.objects import FolderObjects, clean_etag, content_etag


def test_a_file_is_read_with_its_content_hash_as_etag_and_its_type(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"png bytes")
    got = FolderObjects(tmp_path, max_bytes=100).get("local", "a/x.png")
    assert (got.data, got.etag, got.size, got.content_type) == (
        b"png bytes",
        content_etag(b"png bytes"),
        9,
        "image/png",
    )
    assert got.modified is not None and got.error is None


def test_a_file_over_the_limit_is_not_read_but_reported(tmp_path: Path) -> None:
    (tmp_path / "big.jpg").write_bytes(b"x" * 101)
    got = FolderObjects(tmp_path, max_bytes=100).get("local", "big.jpg")
    assert got.data is None and got.size == 101 and "too large" in (got.error or "")


def test_a_missing_file_is_not_found_and_has_no_current_version(tmp_path: Path) -> None:
    objects = FolderObjects(tmp_path, max_bytes=100)
    with pytest.raises(NotFound, match="no longer exists"):
        objects.get("local", "gone.jpg")
    assert objects.current_etag("local", "gone.jpg") is None


def test_an_absolute_key_is_read_as_is(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.jpg").write_bytes(b"abc")
    assert (
        FolderObjects(Path("/nonexistent-root"), max_bytes=100).get("", str(tmp_path / "elsewhere.jpg")).data
        == b"abc"
    )


def test_etags_are_stored_bare() -> None:
    assert clean_etag('"abc"') == "abc" and clean_etag(" ") is None and clean_etag(None) is None
