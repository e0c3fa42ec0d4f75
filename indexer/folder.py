"""Local folder source: ``mediasearch index ./photos`` (the embedded default and the demo).

Every image file under the folder (by extension, hidden files skipped) is one object: the bucket
is ``MEDIASEARCH_INDEXER_LOCAL_BUCKET`` (``local``) or ``--bucket``, the key its path relative to
the folder, the ETag the SHA-256 of its content and tags. Its tags come from a JSON sidecar beside
it (``photo.jpg.json``, else ``photo.json``; :func:`mediasearch.objects.sidecar_tags`), which is
not an image itself. Running it again indexes only what is new or changed (a changed file or
sidecar is a new version: it replaces the old one); use one bucket name per folder.
With ``prune``, files the bucket's rows name and the folder no longer holds are removed too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path

from mediasearch.encoders.base import Encoder
from mediasearch.errors import NotFound
from mediasearch.indexer.events import ObjectEvent
from mediasearch.indexer.items import IndexReport
from mediasearch.indexer.runner import ProgressCallback
from mediasearch.indexer.service import run_pipeline
from mediasearch.indexer.source import Delivery, ListedSource
from mediasearch.metadata.db import migrated_engine, session_factory
from mediasearch.metadata.images_repo import recorded_keys
from mediasearch.objects import FolderObjects
from mediasearch.settings import Settings

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
)


def image_files(root: Path) -> list[str]:
    """Keys (POSIX paths relative to ``root``) of the image files under it, sorted."""
    keys = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            keys.append(rel.as_posix())
    return sorted(keys)


class FolderSource(ListedSource):
    """One delivery per image file; acknowledging is a no-op (the database remembers)."""

    def __init__(self, root: Path, bucket: str) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFound(f"{root} is not a folder")
        self.bucket = bucket
        self.keys = image_files(root)
        self._pending = deque(Delivery([ObjectEvent("created", bucket, key)], token=key) for key in self.keys)
        self.total = len(self._pending)


async def aindex_folder(
    settings: Settings,
    path: str | Path,
    *,
    encoder: Encoder | None = None,
    progress: ProgressCallback | None = None,
    bucket: str | None = None,
    prune: bool = False,
) -> IndexReport:
    """:func:`index_folder` for callers already inside an event loop (e.g. an async gateway)."""
    root = Path(path)
    source = FolderSource(root, bucket or settings.indexer_local_bucket)
    if prune:
        await asyncio.to_thread(_queue_removals, settings, source)
    objects = FolderObjects(root, max_bytes=settings.max_image_bytes)
    return await run_pipeline(settings, source, objects, encoder=encoder, progress=progress)


def _queue_removals(settings: Settings, source: FolderSource) -> int:
    """Removals for the files the bucket's rows name and the folder no longer holds."""
    with migrated_engine(settings.database_url) as engine, session_factory(engine)() as session:
        recorded = recorded_keys(session, source.bucket)
    return source.add_removals(source.bucket, recorded - set(source.keys))


def index_folder(
    settings: Settings,
    path: str | Path,
    *,
    encoder: Encoder | None = None,
    progress: ProgressCallback | None = None,
    bucket: str | None = None,
    prune: bool = False,
) -> IndexReport:
    """Index every image file under ``path`` into the database and segment store of ``settings``.

    Blocks until done and returns the counts (:class:`IndexReport`: indexed, failed with reasons,
    skipped because already indexed). Safe to run again or after a crash: only what is missing
    is indexed. Files that are not usable images are recorded as FAILED rows with the reason.

    - ``encoder``: an already started :class:`Encoder` to share (it is not closed); by default one
      is created from the settings (``MEDIASEARCH_ENCODER``, ``MEDIASEARCH_MODEL_REPOSITORY``). It
      must belong to the event loop this call creates, so pass one only from synchronous code that
      does not reuse it in another loop, or call :func:`aindex_folder` from async code.
    - ``progress``: called as ``progress(report, total)`` after each committed batch
      (:class:`mediasearch.indexer.progress.ProgressBar` draws a bar on stderr).
    - ``bucket``: the bucket name recorded in the images rows (default
      ``settings.indexer_local_bucket``, ``local``); keys are paths relative to ``path``.
    - ``prune``: also remove from the index the files of ``bucket`` that are no longer in the
      folder (their rows become REMOVED, their vectors tombstoned). The folder must then be the
      only one indexed under that bucket name.
    """
    return asyncio.run(
        aindex_folder(settings, path, encoder=encoder, progress=progress, bucket=bucket, prune=prune)
    )
