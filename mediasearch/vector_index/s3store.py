"""The S3 segment store, through the project's one AWS boundary (:mod:`mediasearch.aws`).

Upload order makes ``put`` all-or-nothing to readers: data files first, ``segment.json`` last, so
an object listing only reports a segment complete once every file is there. A writer killed
mid-upload leaves an incomplete prefix that garbage collection removes after the grace period.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

from mediasearch import aws
from mediasearch.vector_index.segment import DATA_FILES, META_FILE, SegmentMeta
from mediasearch.vector_index.store import CachingStore, StoredSegment, _segment_id_of


class S3Store(CachingStore):
    """Segments under ``s3://<bucket>/<prefix>/<segment id>/``."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        cache_dir: Path,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        super().__init__(cache_dir)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client or aws.client("s3", endpoint_url=endpoint_url)

    def _key(self, segment_id: str, name: str = "") -> str:
        parts = [p for p in (self.prefix, segment_id, name) if p]
        return "/".join(parts)

    def _uri(self, segment_id: str) -> str:
        return f"s3://{self.bucket}/{self._key(segment_id)}"

    def put(self, folder: Path, meta: SegmentMeta) -> str:
        with aws.translated(f"uploading segment {meta.segment_id}"):
            for name in (*DATA_FILES, META_FILE):  # META_FILE last: it marks the segment complete
                self._client.upload_file(str(folder / name), self.bucket, self._key(meta.segment_id, name))
        return self._uri(meta.segment_id)

    def _download(self, uri: str, dest: Path) -> None:
        segment_id = _segment_id_of(uri)
        with aws.translated(f"downloading segment {uri}"):
            for name in (META_FILE, *DATA_FILES):
                self._client.download_file(self.bucket, self._key(segment_id, name), str(dest / name))

    def delete(self, uri: str) -> None:
        segment_id = _segment_id_of(uri)
        keys = [obj["Key"] for obj in self._objects(self._key(segment_id) + "/")]
        with aws.translated(f"deleting segment {uri}"):
            for start in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})

    def list(self) -> list[StoredSegment]:
        groups: dict[str, builtins.list[dict[str, Any]]] = {}
        root = self.prefix + "/" if self.prefix else ""
        for obj in self._objects(root):
            rest = obj["Key"][len(root) :]
            if "/" in rest:
                groups.setdefault(rest.split("/", 1)[0], []).append(obj)
        return [
            StoredSegment(
                segment_id=sid,
                uri=self._uri(sid),
                modified=max(o["LastModified"].timestamp() for o in objs),
                complete=any(o["Key"].endswith("/" + META_FILE) for o in objs),
            )
            for sid, objs in sorted(groups.items())
        ]

    def _objects(self, prefix: str) -> builtins.list[dict[str, Any]]:
        with aws.translated(f"listing s3://{self.bucket}/{prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [obj for page in pages for obj in page.get("Contents", [])]
