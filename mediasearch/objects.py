"""Reading users' images, from an S3 bucket or a local folder, through one interface.

The indexer's fetch stage and the gateway's "more like this" (an indexed image searched by its id)
read through the same :class:`ObjectReader`. Errors are the project's: :class:`NotFound` (the
object is gone), :class:`Conflict` (S3's ``if_match`` failed: the key now holds another version; a
folder has no versions to compare),
:class:`Unavailable` (S3 or the disk failed; try later). An object larger than ``max_bytes`` is
not downloaded: it comes back with ``error`` set. Whether the bytes are an image is the decoder's
business.
"""

from __future__ import annotations

import abc
import hashlib
import mimetypes
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mediasearch import aws
from mediasearch.errors import NotFound, Unavailable


@dataclass(frozen=True)
class StoredObject:
    """One object version: ``data`` is None when ``error`` says why it was not read."""

    etag: str
    size: int
    content_type: str | None
    modified: datetime | None
    data: bytes | None = None
    error: str | None = None


def clean_etag(etag: str | None) -> str | None:
    """S3 hands ETags out quoted in some APIs and bare in others; they are stored bare."""
    if etag is None:
        return None
    etag = etag.strip().strip('"')
    return etag or None


def content_etag(data: bytes) -> str:
    """The ETag of a local file: the SHA-256 of its content (a new content is a new version)."""
    return hashlib.sha256(data).hexdigest()


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
                if size > self.max_bytes:
                    error = too_large(size, self.max_bytes)
                    return StoredObject(etag, size, content_type, modified, None, error)
                data = body.read()
            finally:
                body.close()
        return StoredObject(etag, len(data), content_type, modified, data)

    def current_etag(self, bucket: str, key: str) -> str | None:
        try:
            with aws.translated(f"s3://{bucket}/{key}"):
                return clean_etag(self.client.head_object(Bucket=bucket, Key=key).get("ETag"))
        except NotFound:
            return None


class FolderObjects(ObjectReader):
    """Files under ``root``: the key is the path relative to it (an absolute key is used as is);
    the bucket is a label. The ETag is the SHA-256 of the content."""

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
        return StoredObject(content_etag(data), len(data), content_type, modified, data)

    def current_etag(self, bucket: str, key: str) -> str | None:
        try:
            return self.get(bucket, key).etag
        except NotFound:
            return None
