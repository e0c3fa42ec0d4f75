"""Reading users' images, from an S3 bucket or a local folder, through one interface.

The indexer's fetch stage and the gateway's "more like this" (an indexed image searched by its id)
read through the same :class:`ObjectReader`. Errors are the project's: :class:`NotFound` (the
object is gone), :class:`Conflict` (S3's ``if_match`` failed: the key now holds another version; a
folder has no versions to compare),
:class:`Unavailable` (S3 or the disk failed; try later). An object larger than ``max_bytes`` is
not downloaded: it comes back with ``error`` set. Whether the bytes are an image is the decoder's
business.

Tags come with the object, from no extra request: an S3 object's user metadata ``tags``
(``x-amz-meta-tags``, comma-separated; in the response of the same ``GetObject``), a file's JSON
sidecar (``photo.jpg.json``, else ``photo.json``: its ``"tags"`` list). Both go through
:func:`normalize_tags` (trimmed, lowercased, deduplicated in order; at most :data:`MAX_TAGS` of at
most :data:`MAX_TAG_CHARS` characters). A sidecar that cannot be read or parsed means no tags,
never a failed image.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import mimetypes
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

from mediasearch import aws
from mediasearch.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

#: An image keeps at most this many tags (the first ones), each cut to at most MAX_TAG_CHARS.
MAX_TAGS = 64
MAX_TAG_CHARS = 100
#: The S3 user metadata key (``x-amz-meta-tags``) that holds an object's comma-separated tags.
TAGS_METADATA_KEY = "tags"
#: A larger sidecar is not read (its image is indexed without tags).
MAX_SIDECAR_BYTES = 1 << 20


@dataclass(frozen=True)
class StoredObject:
    """One object version: ``data`` is None when ``error`` says why it was not read."""

    etag: str
    size: int
    content_type: str | None
    modified: datetime | None
    data: bytes | None = None
    error: str | None = None
    tags: tuple[str, ...] = ()


def clean_etag(etag: str | None) -> str | None:
    """S3 hands ETags out quoted in some APIs and bare in others; they are stored bare."""
    if etag is None:
        return None
    etag = etag.strip().strip('"')
    return etag or None


def content_etag(data: bytes, tags: Sequence[str] = ()) -> str:
    """The ETag of a local file: the SHA-256 of its content, and of its tags when it has some (a
    new content or new tags in its sidecar is a new version, indexed again with them)."""
    digest = hashlib.sha256(data)
    if tags:
        digest.update(b"\0tags\0" + json.dumps(list(tags)).encode())
    return digest.hexdigest()


def normalize_tag(value: str) -> str:
    """One tag as stored and filtered on: whitespace trimmed (inner runs made one space), lowercased."""
    return " ".join(value.split()).lower()


def normalize_tags(values: Iterable[str], where: str) -> tuple[str, ...]:
    """Tags as stored and filtered on: whitespace trimmed (inner runs made one space), lowercased,
    empty ones dropped, duplicates dropped (the first kept, in order), each cut to
    :data:`MAX_TAG_CHARS` characters, at most :data:`MAX_TAGS` of them (cuts are logged)."""
    tags: dict[str, None] = {}
    cut = 0
    for value in values:
        tag = normalize_tag(value)
        if len(tag) > MAX_TAG_CHARS:
            tag, cut = tag[:MAX_TAG_CHARS].rstrip(), cut + 1
        if tag:
            tags.setdefault(tag, None)
    if cut:
        log.info("%s: %d tags cut to %d characters", where, cut, MAX_TAG_CHARS)
    if len(tags) > MAX_TAGS:
        log.info("%s: %d tags, only the first %d kept", where, len(tags), MAX_TAGS)
    return tuple(tags)[:MAX_TAGS]


def split_tags(text: str, where: str) -> tuple[str, ...]:
    """Comma-separated tags (``"beach, Sunset,beach"`` -> ``("beach", "sunset")``)."""
    return normalize_tags(text.split(","), where)


def metadata_tags(metadata: Mapping[str, str] | None, where: str) -> tuple[str, ...]:
    """The tags of an S3 object's user metadata (boto3's ``Metadata``): the value of ``tags``
    (S3 hands non-ASCII values back RFC 2047-encoded: they are decoded)."""
    value = next((v for k, v in (metadata or {}).items() if k.lower() == TAGS_METADATA_KEY), None)
    if not value:
        return ()
    if "=?" in value:
        try:
            value = str(make_header(decode_header(value)))
        except (ValueError, LookupError) as exc:  # a malformed encoded word: taken as it is
            log.debug("%s: tags metadata not decoded: %s", where, exc)
    return split_tags(value, where)


def sidecar_of(path: Path) -> Path | None:
    """The JSON sidecar of an image file: ``photo.jpg.json`` if there is one, else ``photo.json``."""
    for candidate in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if candidate != path and candidate.is_file():
            return candidate
    return None


def sidecar_tags(path: Path) -> tuple[str, ...]:
    """The tags of the image file ``path`` from its sidecar's ``"tags"`` (a list of strings, or
    one comma-separated string). No sidecar, no ``"tags"``, or a sidecar that cannot be read or
    parsed (logged): no tags."""
    sidecar = sidecar_of(path)
    if sidecar is None:
        return ()
    try:
        if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
            raise ValueError(f"larger than {MAX_SIDECAR_BYTES} bytes")
        content = json.loads(sidecar.read_bytes())
        if not isinstance(content, dict):
            raise ValueError("not a JSON object")
        value = content.get("tags")
        if value is None:
            return ()
        if isinstance(value, str):
            return split_tags(value, str(sidecar))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError('"tags" is not a list of strings')
        return normalize_tags(value, str(sidecar))
    except (OSError, ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        log.info("%s: sidecar ignored, %s has no tags: %s", sidecar, path.name, exc)
        return ()


def sequencer_order(a: str | None, b: str | None) -> int | None:
    """1 when the event of sequencer ``a`` happened after that of ``b`` (same key), -1 before,
    None when they cannot be ordered: one is missing, or they are equal (S3 never gives two events
    of one key the same sequencer, so equal ones come from a producer that does not send real
    ones; the caller then asks the bucket). S3's rule: left-pad the shorter with zeros, compare."""
    if a is None or b is None:
        return None
    width = max(len(a), len(b))
    pa, pb = a.upper().rjust(width, "0"), b.upper().rjust(width, "0")
    if pa == pb:
        return None
    return 1 if pa > pb else -1


def too_large(size: int, limit: int) -> str:
    return f"image too large: {size} bytes (limit {limit})"


class ObjectReader(abc.ABC):
    """Objects by bucket and key."""

    def __init__(self, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    @abc.abstractmethod
    def get(self, bucket: str, key: str, *, if_match: str | None = None) -> StoredObject:
        """The object's bytes and attributes (``if_match``: only that version)."""

    @abc.abstractmethod
    def current_etag(self, bucket: str, key: str) -> str | None:
        """The ETag of the version under ``key`` now; None when there is none."""


class S3Objects(ObjectReader):
    """``GetObject`` (with ``If-Match``, so a stale event never reads a newer version under the old
    version's identity) through a client from :func:`mediasearch.aws.client`."""

    def __init__(self, client: Any, *, max_bytes: int) -> None:
        super().__init__(max_bytes=max_bytes)
        self.client = client

    def get(self, bucket: str, key: str, *, if_match: str | None = None) -> StoredObject:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if if_match:
            kwargs["IfMatch"] = if_match
        with aws.translated(f"s3://{bucket}/{key}"):
            response = self.client.get_object(**kwargs)
            body = response["Body"]
            try:
                size = int(response.get("ContentLength", 0))
                etag = clean_etag(response.get("ETag")) or if_match or ""
                modified = response.get("LastModified")
                content_type = response.get("ContentType")
                tags = metadata_tags(response.get("Metadata"), f"s3://{bucket}/{key}")
                if size > self.max_bytes:
                    error = too_large(size, self.max_bytes)
                    return StoredObject(etag, size, content_type, modified, None, error, tags)
                data = body.read()
            finally:
                body.close()
        return StoredObject(etag, len(data), content_type, modified, data, tags=tags)

    def current_etag(self, bucket: str, key: str) -> str | None:
        try:
            with aws.translated(f"s3://{bucket}/{key}"):
                return clean_etag(self.client.head_object(Bucket=bucket, Key=key).get("ETag"))
        except NotFound:
            return None


class FolderObjects(ObjectReader):
    """Files under ``root``: the key is the path relative to it (an absolute key is used as is);
    the bucket is a label. Tags come from the file's sidecar (:func:`sidecar_tags`); the ETag is
    the SHA-256 of the content and of those tags (:func:`content_etag`)."""

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        super().__init__(max_bytes=max_bytes)
        self.root = Path(root)

    def get(self, bucket: str, key: str, *, if_match: str | None = None) -> StoredObject:
        path = self.root / key
        try:
            stat = path.stat()
            modified = datetime.fromtimestamp(stat.st_mtime, UTC)
            content_type = mimetypes.guess_type(path.name)[0]
            if stat.st_size > self.max_bytes:
                etag = f"size-{stat.st_size}-mtime-{stat.st_mtime_ns}"  # never read a huge file to hash it
                error = too_large(stat.st_size, self.max_bytes)
                return StoredObject(etag, stat.st_size, content_type, modified, None, error)
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"{path}: no longer exists") from exc
        except OSError as exc:
            raise Unavailable(f"{path}: {exc}") from exc
        tags = sidecar_tags(path)
        return StoredObject(content_etag(data, tags), len(data), content_type, modified, data, tags=tags)

    def current_etag(self, bucket: str, key: str) -> str | None:
        try:
            return self.get(bucket, key).etag
        except NotFound:
            return None
