"""Bucket backfill: ``mediasearch backfill s3://bucket/prefix`` indexes what is missing.

Lists the prefix (``ListObjectsV2``), leaves out every object version the database already
recorded (indexed, failed or removed: one query per listing page), and sends the rest through the
same pipeline as live events. Interrupt it and run it again: it resumes with what is still missing.

``part=Part(i, n)`` splits the key space: this run takes only the keys whose stable hash is ``i``
mod ``n``, so ``n`` runs (a Kubernetes Indexed Job's pods) share a bucket without overlap.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from sqlalchemy.orm import Session, sessionmaker

from mediasearch import aws
from mediasearch.encoders.base import Encoder
from mediasearch.errors import ConfigError
from mediasearch.indexer.events import ObjectEvent
from mediasearch.indexer.items import IndexReport
from mediasearch.indexer.runner import ProgressCallback
from mediasearch.indexer.service import run_pipeline, s3_client
from mediasearch.indexer.source import Delivery, ListedSource
from mediasearch.metadata.db import migrated_engine, session_factory
from mediasearch.metadata.images_repo import known_versions, recorded_keys
from mediasearch.metadata.models import FAILED, INDEXED
from mediasearch.objects import S3Objects, clean_etag
from mediasearch.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` of the key space (``--part 2/8``)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ConfigError(f"part {self.index}/{self.count}: need 0 <= index < count")

    @classmethod
    def parse(cls, text: str) -> Part:
        index, sep, count = text.partition("/")
        if not (sep and index.strip().isdigit() and count.strip().isdigit()):
            raise ConfigError(f"part {text!r}: write INDEX/COUNT, e.g. 0/4")
        return cls(int(index), int(count))

    def holds(self, key: str) -> bool:
        """Whether ``key`` belongs to this part (a hash stable across processes and machines)."""
        if self.count == 1:
            return True
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"{url!r} is not an s3://bucket[/prefix] URL")
    return parsed.netloc, parsed.path.lstrip("/")


class ListingSource(ListedSource):
    """One delivery per listed object not yet recorded. :meth:`list_missing` must run first."""

    def __init__(
        self, client: Any, bucket: str, prefix: str, sessions: sessionmaker[Session], part: Part = Part()
    ) -> None:
        super().__init__()
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.sessions = sessions
        self.part = part
        self.listed = 0
        self.already = 0
        self.keys: set[str] = set()

    def list_missing(self) -> int:
        """List the prefix; returns how many objects are missing from the index."""
        paginator = self.client.get_paginator("list_objects_v2")
        with aws.translated(f"listing s3://{self.bucket}/{self.prefix}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                objects = [
                    o
                    for o in page.get("Contents", [])
                    if not o["Key"].endswith("/") and self.part.holds(o["Key"])
                ]
                with self.sessions() as session:
                    known = known_versions(session, self.bucket, [o["Key"] for o in objects])
                for obj in objects:
                    self.listed += 1
                    self.keys.add(obj["Key"])
                    etag = clean_etag(obj.get("ETag"))
                    status = known.get((obj["Key"], etag or ""))
                    if status in (INDEXED, FAILED):  # removed but listed: the same bytes came back
                        self.already += 1
                        continue
                    event = ObjectEvent("created", self.bucket, obj["Key"], etag, int(obj.get("Size", 0)),
                                        obj.get("LastModified"))  # fmt: skip
                    self._pending.append(Delivery([event], token=obj["Key"]))
        self.total = len(self._pending)
        log.info(
            "backfill: %d objects listed, %d already recorded, %d to index",
            self.listed,
            self.already,
            self.total,
        )
        return self.total


async def abackfill(
    settings: Settings,
    url: str,
    *,
    encoder: Encoder | None = None,
    progress: ProgressCallback | None = None,
    prune: bool = False,
    part: Part = Part(),
) -> IndexReport:
    """Index the objects under ``s3://bucket/prefix`` that the database has not recorded yet; with
    ``prune``, also remove from the index the keys under the prefix that the bucket no longer holds
    (ObjectRemoved notifications that never arrived, e.g. before the queue was configured). Only
    the keys of ``part``, for both."""
    bucket, prefix = parse_s3_url(url)
    client = s3_client(settings)
    with migrated_engine(settings.database_url) as engine:
        sessions = session_factory(engine)
        source = ListingSource(client, bucket, prefix, sessions, part)
        await asyncio.to_thread(source.list_missing)
        if prune:
            with sessions() as session:
                recorded = await asyncio.to_thread(recorded_keys, session, bucket, prefix)
            gone = {key for key in recorded - source.keys if part.holds(key)}
            pruned = source.add_removals(bucket, gone)
            log.info("backfill: %d recorded keys no longer in the bucket, removing them", pruned)
    objects = S3Objects(client, max_bytes=settings.max_image_bytes)
    return await run_pipeline(settings, source, objects, encoder=encoder, progress=progress)


def backfill(
    settings: Settings,
    url: str,
    *,
    encoder: Encoder | None = None,
    progress: ProgressCallback | None = None,
    prune: bool = False,
    part: Part = Part(),
) -> IndexReport:
    """Blocking :func:`abackfill`."""
    return asyncio.run(abackfill(settings, url, encoder=encoder, progress=progress, prune=prune, part=part))
