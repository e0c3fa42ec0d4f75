"""Reading users' images and their tags from a folder (S3: tests/integration/test_objects_s3.py)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from mediasearch.errors import NotFound
from mediasearch.objects import (
    MAX_SIDECAR_BYTES,
    MAX_TAG_CHARS,
    MAX_TAGS,
    FolderObjects,
    clean_etag,
    content_etag,
    metadata_tags,
    normalize_tags,
    sidecar_tags,
    split_tags,
)


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


# -- tags ---------------------------------------------------------------------------------------


def test_tags_are_trimmed_lowercased_and_deduplicated_in_order() -> None:
    assert split_tags("beach, Sunset,beach", "x") == ("beach", "sunset")
    assert split_tags(" ,  New   York ,,NEW YORK, ", "x") == ("new york",)
    assert split_tags("", "x") == ()


def test_tags_over_the_limits_are_cut_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mediasearch.objects")
    many = normalize_tags([f"t{i}" for i in range(MAX_TAGS + 10)], "many.jpg")
    assert many == tuple(f"t{i}" for i in range(MAX_TAGS))
    long = normalize_tags(["x" * (MAX_TAG_CHARS + 50), "x" * (MAX_TAG_CHARS + 1), "ok"], "long.jpg")
    assert long == ("x" * MAX_TAG_CHARS, "ok")  # cut to the same tag: one is kept
    logged = caplog.text
    assert f"many.jpg: {MAX_TAGS + 10} tags, only the first {MAX_TAGS} kept" in logged
    assert f"long.jpg: 2 tags cut to {MAX_TAG_CHARS} characters" in logged


def test_s3_metadata_tags_are_read_from_the_tags_key_and_decoded() -> None:
    assert metadata_tags({"tags": "beach, Sunset,beach", "other": "x"}, "k") == ("beach", "sunset")
    assert metadata_tags({"Tags": "a"}, "k") == ("a",)
    assert metadata_tags({"tags": "=?UTF-8?B?w6l0w6ksIFBsYWdl?="}, "k") == ("été", "plage")  # RFC 2047
    assert metadata_tags({}, "k") == metadata_tags(None, "k") == metadata_tags({"tags": ""}, "k") == ()


def test_a_file_gets_the_tags_of_its_sidecar_and_its_full_name_sidecar_wins(tmp_path: Path) -> None:
    objects = FolderObjects(tmp_path, max_bytes=100)
    for name in ("a.jpg", "b.jpg", "c.png"):
        (tmp_path / name).write_bytes(b"image")
    (tmp_path / "a.jpg.json").write_text(json.dumps({"tags": ["Beach", "sunset", "beach"]}))
    (tmp_path / "a.json").write_text(json.dumps({"tags": ["ignored"]}))
    (tmp_path / "b.json").write_text(json.dumps({"tags": "dog, Cat", "caption": "other keys ignored"}))
    assert objects.get("local", "a.jpg").tags == ("beach", "sunset")
    assert objects.get("local", "b.jpg").tags == ("dog", "cat")
    assert objects.get("local", "c.png").tags == ()  # no sidecar
    assert objects.get("local", "c.png").etag == content_etag(b"image")


def test_new_tags_in_a_sidecar_are_a_new_version(tmp_path: Path) -> None:
    objects = FolderObjects(tmp_path, max_bytes=100)
    (tmp_path / "a.jpg").write_bytes(b"image")
    untagged = objects.get("local", "a.jpg").etag
    (tmp_path / "a.json").write_text(json.dumps({"tags": ["x"]}))
    tagged = objects.get("local", "a.jpg")
    assert tagged.etag == content_etag(b"image", ("x",)) != untagged
    (tmp_path / "a.json").write_text(json.dumps({"tags": ["x"], "note": "same tags"}, indent=2))
    assert objects.get("local", "a.jpg").etag == tagged.etag == objects.current_etag("local", "a.jpg")
    (tmp_path / "a.json").write_text(json.dumps({"tags": ["x", "y"]}))
    assert objects.get("local", "a.jpg").etag != tagged.etag


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe garbage",
        b'["tags", "a list"]',
        b'{"tags": [1, 2]}',
        b'{"tags": {"a": 1}}',
        b"[" * 100_000,
        b'{"tags": ["x"], "pad": "' + b"p" * MAX_SIDECAR_BYTES + b'"}',
    ],
    ids=["not-json", "not-utf8", "not-an-object", "not-strings", "a-dict", "deep", "huge"],
)
def test_a_broken_sidecar_means_no_tags_and_a_log_line_never_an_error(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mediasearch.objects")
    (tmp_path / "a.jpg").write_bytes(b"image")
    (tmp_path / "a.jpg.json").write_bytes(content)
    got = FolderObjects(tmp_path, max_bytes=100).get("local", "a.jpg")
    assert (got.data, got.tags, got.etag) == (b"image", (), content_etag(b"image"))
    assert "a.jpg.json: sidecar ignored, a.jpg has no tags" in caplog.text
    assert sidecar_tags(tmp_path / "a.jpg") == ()


def test_a_folder_named_like_a_sidecar_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"image")
    (tmp_path / "a.jpg.json").mkdir()
    (tmp_path / "a.json").write_text('{"tags": ["fallback"]}')
    assert FolderObjects(tmp_path, max_bytes=100).get("local", "a.jpg").tags == ("fallback",)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: permissions are not enforced")
def test_an_unreadable_sidecar_means_no_tags(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"image")
    (tmp_path / "a.json").write_text('{"tags": ["secret"]}')
    (tmp_path / "a.json").chmod(0)
    try:
        assert FolderObjects(tmp_path, max_bytes=100).get("local", "a.jpg").tags == ()
    finally:
        (tmp_path / "a.json").chmod(0o644)
