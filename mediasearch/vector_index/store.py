"""Segment stores: one small interface, a local folder, S3, and an in-memory fake.

A store only ever holds complete, immutable segments under their id; the manifest in the metadata
database says which of them are live. Anything in a store that the manifest does not name is an
orphan (a writer died between upload and publish) and is garbage-collected after a grace period.
Shards read segments from a local folder so FAISS can memory-map them: the local store hands out
its own folder, remote stores download into a cache folder first (verified, then renamed in).
"""

from __future__ import annotations

import abc
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from mediasearch.errors import ConfigError, NotFound
from mediasearch.settings import Settings
from mediasearch.vector_index.segment import DATA_FILES, META_FILE, SegmentMeta, read_meta, verify


@dataclass(frozen=True)
class StoredSegment:
    """One entry of a store listing; ``complete`` is False for a half-written upload."""

    segment_id: str
    uri: str
    modified: float  # unix seconds of the newest file
    complete: bool


class SegmentStore(abc.ABC):
    """Where segment files live. Implementations must make ``put`` all-or-nothing to readers."""

    @abc.abstractmethod
    def put(self, folder: Path, meta: SegmentMeta) -> str:
        """Copy the complete segment in ``folder`` into the store; return its URI."""

    @abc.abstractmethod
    def open(self, uri: str, *, verify_checksums: bool = True) -> Path:
        """A local folder holding the segment, ready to memory-map."""

    @abc.abstractmethod
    def delete(self, uri: str) -> None:
        """Remove a segment's files; deleting a missing segment is not an error."""

    @abc.abstractmethod
    def list(self) -> list[StoredSegment]:
        """Every segment (complete or not) in the store, for garbage collection."""

    def release(self, uri: str, folder: Path) -> None:  # noqa: B027 - optional hook
        """Forget a local copy made by :meth:`open` once no reader holds it."""


def _segment_id_of(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


class LocalFolderStore(SegmentStore):
    """Segments as sub-folders of one folder (a laptop, or a shared volume in a cluster)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, folder: Path, meta: SegmentMeta) -> str:
        final = self.root / meta.segment_id
        staging = self.root / f".staging-{meta.segment_id}-{uuid.uuid4().hex[:6]}"
        staging.mkdir()
        for name in (*DATA_FILES, META_FILE):
            _link_or_copy(folder / name, staging / name)
        os.replace(staging, final)  # atomic on one filesystem: readers see all files or none
        return final.as_uri()

    def open(self, uri: str, *, verify_checksums: bool = True) -> Path:
        folder = Path(urlparse(uri).path)
        if not (folder / META_FILE).is_file():
            raise NotFound(f"segment {uri} is not in the store")
        if verify_checksums:
            verify(folder, read_meta(folder))
        return folder

    def delete(self, uri: str) -> None:
        shutil.rmtree(Path(urlparse(uri).path), ignore_errors=True)

    def list(self) -> list[StoredSegment]:
        out = []
        for child in sorted(self.root.iterdir()):
            if not child.is_dir():
                continue
            files = list(child.iterdir())
            modified = max((f.stat().st_mtime for f in files), default=child.stat().st_mtime)
            complete = (child / META_FILE).is_file() and not child.name.startswith(".")
            out.append(StoredSegment(child.name, child.as_uri(), modified, complete))
        return out


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when the writer's folder is on the same filesystem (no copy of a 2 GB segment)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class CachingStore(SegmentStore):
    """Base for remote stores: ``open`` downloads into a local cache folder, verified, atomically.

    Opens are counted per segment: the copy is deleted when the last opener releases it, so a
    segment dropped and re-added while an old query still holds it keeps its files.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir).absolute()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._opened: Counter[str] = Counter()
        self._lock = threading.Lock()

    @abc.abstractmethod
    def _download(self, uri: str, dest: Path) -> None:
        """Write the segment's files into ``dest`` (raise NotFound if it is not there)."""

    def open(self, uri: str, *, verify_checksums: bool = True) -> Path:
        final = self.cache_dir / _segment_id_of(uri)
        with self._lock:
            if (final / META_FILE).is_file():
                self._opened[final.name] += 1
                return final
        self._download_verified(uri, final)
        with self._lock:
            self._opened[final.name] += 1
        return final

    def _download_verified(self, uri: str, final: Path) -> None:
        staging = self.cache_dir / f".staging-{final.name}-{uuid.uuid4().hex[:6]}"
        staging.mkdir()
        try:
            self._download(uri, staging)
            verify(staging, read_meta(staging))  # a download is always checked: networks lie
            os.replace(staging, final)
        except OSError:
            if not (final / META_FILE).is_file():  # lost a race with another opener: theirs is fine
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def release(self, uri: str, folder: Path) -> None:
        with self._lock:
            self._opened[folder.name] -= 1
            if self._opened[folder.name] > 0 or folder.parent != self.cache_dir:
                return
            del self._opened[folder.name]
            shutil.rmtree(folder, ignore_errors=True)


class MemoryStore(CachingStore):
    """In-process fake for unit tests: the same contract, with files held as bytes."""

    def __init__(self, cache_dir: Path) -> None:
        super().__init__(cache_dir)
        self._files: dict[str, dict[str, bytes]] = {}
        self._modified: dict[str, float] = {}

    def put(self, folder: Path, meta: SegmentMeta) -> str:
        files = {name: (folder / name).read_bytes() for name in (*DATA_FILES, META_FILE)}
        self._files[meta.segment_id] = files
        self._modified[meta.segment_id] = time.time()
        return f"memory://{meta.segment_id}"

    def _download(self, uri: str, dest: Path) -> None:
        files = self._files.get(_segment_id_of(uri))
        if files is None:
            raise NotFound(f"segment {uri} is not in the store")
        for name, data in files.items():
            (dest / name).write_bytes(data)

    def delete(self, uri: str) -> None:
        self._files.pop(_segment_id_of(uri), None)

    def list(self) -> list[StoredSegment]:
        return [
            StoredSegment(sid, f"memory://{sid}", self._modified[sid], META_FILE in files)
            for sid, files in sorted(self._files.items())
        ]


def open_store(url: str, *, cache_dir: Path, endpoint_url: str | None = None) -> SegmentStore:
    """The one factory: file://<folder> (or a bare path), s3://<bucket>/<prefix>, memory://."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalFolderStore(Path(parsed.netloc + parsed.path))
    if parsed.scheme == "s3":
        from mediasearch.vector_index.s3store import S3Store

        return S3Store(parsed.netloc, parsed.path.strip("/"), cache_dir=cache_dir, endpoint_url=endpoint_url)
    if parsed.scheme == "memory":
        return MemoryStore(cache_dir)
    raise ConfigError(f"segment store URL {url!r}: use file://<folder> or s3://<bucket>/<prefix>")


def store_from_settings(settings: Settings, cache: str = "") -> SegmentStore:
    """``MEDIASEARCH_SEGMENT_STORE_URL``'s store; remote segments are cached under
    ``MEDIASEARCH_SEGMENT_CACHE_DIR/<cache>`` (one folder per user of a node's disk)."""
    return open_store(
        settings.segment_store_url,
        cache_dir=Path(settings.segment_cache_dir) / cache,
        endpoint_url=settings.s3_endpoint_url,
    )
