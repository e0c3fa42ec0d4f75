"""Fetch stage: the bytes and attributes of one object version, from S3 or a local folder.

Errors say what the runner should do with the event, in the project's error tree:

- :class:`NotFound`: the object is gone (deleted since the event): nothing to index, acknowledge.
- :class:`Conflict`: the key now holds a different version (``If-Match`` failed): a newer event
  covers it, acknowledge this one.
- :class:`Unavailable`: S3 or the disk failed; retry the delivery later.

An object larger than the limit is not downloaded: it comes back with ``error`` set and is recorded
as failed. Whether the bytes are an image is the decode stage's business.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mediasearch.errors import Conflict, NotFound, Unavailable
from mediasearch.indexer.events import ObjectEvent, clean_etag


@dataclass(frozen=True)
class Fetched:
    """One object version: ``data`` is None when ``error`` says why it was not downloaded."""

    etag: str
    size: int
    content_type: str | None
    created: datetime
    data: bytes | None = None
    error: str | None = None


class Fetcher(abc.ABC):
    """Reads objects named by events."""

    @abc.abstractmethod
    def fetch(self, event: ObjectEvent) -> Fetched: ...

    @abc.abstractmethod
    def current_etag(self, event: ObjectEvent) -> str | None:
        """The ETag of the version under the event's key now; None when there is none. A removal
        keeps this version: the key was written again after the delete."""


def _too_large(size: int, limit: int) -> str:
    return f"image too large: {size} bytes (limit {limit})"


class S3Fetcher(Fetcher):
    """``GetObject`` with ``If-Match`` the event's ETag, so a stale event never indexes a newer
    version under the old version's identity."""

    def __init__(self, client: Any, *, max_bytes: int) -> None:
        self.client = client
        self.max_bytes = max_bytes

    def fetch(self, event: ObjectEvent) -> Fetched:
        kwargs: dict[str, Any] = {"Bucket": event.bucket, "Key": event.key}
        if event.etag:
            kwargs["IfMatch"] = event.etag
        with s3_errors(f"s3://{event.bucket}/{event.key}"):
            response = self.client.get_object(**kwargs)
            body = response["Body"]
            try:
                size = int(response.get("ContentLength", 0))
                etag = clean_etag(response.get("ETag")) or event.etag or ""
                created = response.get("LastModified") or event.time or datetime.now(UTC)
                content_type = response.get("ContentType")
                if size > self.max_bytes:
                    return Fetched(etag, size, content_type, created, None, _too_large(size, self.max_bytes))
                data = body.read()
            finally:
                body.close()
        return Fetched(etag, len(data), content_type, created, data)

    def current_etag(self, event: ObjectEvent) -> str | None:
        try:
            with s3_errors(f"s3://{event.bucket}/{event.key}"):
                return clean_etag(self.client.head_object(Bucket=event.bucket, Key=event.key).get("ETag"))
        except NotFound:
            return None


@contextlib.contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """botocore errors -> the project's tree (see the module docstring)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise NotFound(f"{what}: no longer exists") from exc
        if code in ("412", "PreconditionFailed"):
            raise Conflict(f"{what}: replaced by a newer version") from exc
        raise Unavailable(f"{what}: S3 answered {code or exc}") from exc
    except BotoCoreError as exc:
        raise Unavailable(f"{what}: {exc}") from exc


class FileFetcher(Fetcher):
    """Files under ``root``; the key is the path relative to it, the ETag a hash of the content."""

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def fetch(self, event: ObjectEvent) -> Fetched:
        path = self.root / event.key
        try:
            stat = path.stat()
            created = datetime.fromtimestamp(stat.st_mtime, UTC)
            content_type = mimetypes.guess_type(path.name)[0]
            if stat.st_size > self.max_bytes:
                etag = f"size-{stat.st_size}-mtime-{stat.st_mtime_ns}"  # never read a huge file to hash it
                return Fetched(
                    etag, stat.st_size, content_type, created, None, _too_large(stat.st_size, self.max_bytes)
                )
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"{path}: no longer exists") from exc
        except OSError as exc:
            raise Unavailable(f"{path}: {exc}") from exc
        return Fetched(content_etag(data), len(data), content_type, created, data)

    def current_etag(self, event: ObjectEvent) -> str | None:
        try:
            return self.fetch(event).etag
        except NotFound:
            return None


def content_etag(data: bytes) -> str:
    """The ETag of a local file: its SHA-256 (a new content is a new version)."""
    return hashlib.sha256(data).hexdigest()
