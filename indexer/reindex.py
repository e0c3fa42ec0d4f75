"""Reindex: every indexed image's embedding recomputed with another model, into a new generation.

``mediasearch reindex --model-repository DIR [--part i/N]`` (issue 19, its first part):

1. **The building generation**: the one in state ``building`` for the new model's version, else a
   new one (the next number; model version and vector width from the new model's manifest). A
   generation building for another model refuses the run: two reindexes never mix.
2. **The work**: the INDEXED images of this part (``id mod N == i``), in id order, less the ids
   the generation already holds, so a run killed at any point resumes where it stopped. Several
   parts run side by side (the Indexed Job's pods), each on its own ids.
3. **The indexer's pipeline** (fetch -> decode -> encode, batched, with its progress bar), its
   commit stage replaced: each batch becomes one *staged* segment per shard (the hash of the id,
   as before a generation), recorded in one transaction. Nothing serves a staged segment; the
   images rows are not touched.
4. **The catch-up**: images indexed since the listing that the indexers' dual write
   (:mod:`mediasearch.indexer.dual_write`) did not stage, because it had not yet seen the
   generation, are queued when the listing runs out (:class:`IndexedImages`).
5. **The completeness check**: every INDEXED image has exactly one vector in the generation; what
   is missing (and what was staged twice) is listed.

The switch and the rollback are :mod:`mediasearch.vector_index.upgrade` (``mediasearch generation``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.encoders.factory import create_encoder
from mediasearch.errors import ConfigError, Conflict
from mediasearch.indexer.commit import Committer
from mediasearch.indexer.events import ObjectEvent
from mediasearch.indexer.items import IndexReport, Item
from mediasearch.indexer.runner import Pipeline, PipelineOptions, ProgressCallback
from mediasearch.indexer.service import s3_client
from mediasearch.indexer.source import Delivery, ListedSource
from mediasearch.metadata.db import migrated_engine, session_factory, translated
from mediasearch.metadata.models import INDEXED, GenerationRow, ImageRow, utcnow
from mediasearch.metadata.segment_manifest import lock_generations, next_generation_number
from mediasearch.objects import FolderObjects, ObjectReader, S3Objects, StoredObject
from mediasearch.settings import Settings
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.partition import HashPartitioner
from mediasearch.vector_index.store import SegmentStore, store_from_settings
from mediasearch.vector_index.upgrade import (
    BUILDING,
    Completeness,
    add_staged,
    check_completeness,
    staged_ids,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """``i/N``: this run takes the images whose ``id mod N == i``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Part:
        try:
            index, count = (int(x) for x in text.split("/"))
        except ValueError:
            raise ConfigError(f"--part {text!r}: write i/N, e.g. 0/4 (part 0 of 4)") from None
        if not 0 <= index < count:
            raise ConfigError(f"--part {text!r}: i must be 0..N-1")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def building_generation(session: Session, model_version: str, dim: int, model_name: str = "") -> int:
    """The number of the generation building for ``model_version`` (made now if there is none;
    ``model_name``: the model's name in the repository, where gateways will find its encoder)."""
    with translated("reading the building generation"):
        lock_generations(session)  # parts starting together make one generation, not one each
        rows = list(session.scalars(select(GenerationRow).where(GenerationRow.state == BUILDING)))
        other = [r for r in rows if r.model_version != model_version]
        if other:
            raise Conflict(
                f"generation {other[0].number} is being built for model {other[0].model_version}; "
                f"finish that reindex before starting one for {model_version}"
            )
        if rows:
            if rows[0].dim not in (None, dim):
                raise Conflict(f"generation {rows[0].number} holds {rows[0].dim}-wide vectors, not {dim}")
            return rows[0].number
        number = next_generation_number(session)
        session.add(
            GenerationRow(
                number=number, model_version=model_version, nlist=0, num_shards=0, quantizer_id="",
                quantizer_uri="", vectors=0, imbalance=1.0, state=BUILDING, created=utcnow(), dim=dim,
                model_name=model_name or None,
            )
        )  # fmt: skip
        session.flush()
        log.info("reindex: generation %d is building for model %s (%d-wide)", number, model_version, dim)
        return number


class IndexedImages(ListedSource):
    """One delivery per INDEXED image of the part that the generation does not hold yet.

    Then the catch-up: an indexer finds a building generation up to a few seconds after it is
    made (its check's interval, plus starting the new model's encoder), so images it published in
    between went to neither side: not listed here, not dual-written. When the listing runs out,
    the images of the part indexed since it was made (ids above the listing's highest) that the
    generation still lacks are queued too, up to ``catch_up_rounds`` times while any turn up. A
    reindex that runs longer than that delay ends complete however busy the ingestion; a shorter
    one may still end with a few missing, which the completeness check names (run it again)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: SegmentStore,
        generation: int,
        part: Part,
        *,
        catch_up_rounds: int = 3,
    ) -> None:
        super().__init__()
        self.sessions, self.store, self.generation, self.part = sessions, store, generation, part
        self.catch_up_rounds = catch_up_rounds
        self.caught_up = 0  # images the catch-up queued
        with translated("listing the indexed images"):
            self._last_id = 0  # the highest INDEXED id seen: the catch-up looks above it
            self._queue()
        self.total = len(self._pending)

    def _queue(self) -> int:
        """Queue the part's INDEXED images above ``_last_id`` that the generation lacks; how many."""
        with self.sessions() as session:
            rows = session.execute(
                select(ImageRow.id, ImageRow.bucket, ImageRow.key, ImageRow.etag)
                .where(ImageRow.status == INDEXED, ImageRow.id > self._last_id)
                .order_by(ImageRow.id)
            ).all()
            if rows:
                self._last_id = rows[-1].id
            mine = [r for r in rows if r.id % self.part.count == self.part.index]
            if not mine:  # the staged ids are read only when there is something to check
                return 0
            held = set(staged_ids(session, self.store, self.generation).tolist())
        fresh = [r for r in mine if r.id not in held]
        self._pending.extend(
            Delivery([ObjectEvent("created", r.bucket, r.key, r.etag)], token=r.id) for r in fresh
        )
        return len(fresh)

    def receive(self, max_deliveries: int) -> list[Delivery] | None:
        got = super().receive(max_deliveries)
        while got is None and self.catch_up_rounds > 0:
            self.catch_up_rounds -= 1
            with translated("listing images indexed during the reindex"):
                queued = self._queue()
            if not queued:
                self.catch_up_rounds = 0
                break
            self.caught_up += queued
            self.total = (self.total or 0) + queued
            log.info("reindex: %d images indexed since the listing and not dual-written, queued too", queued)
            got = super().receive(max_deliveries)
        return got


class ImageObjects(ObjectReader):
    """Originals where the indexer found them: a folder for ``local_bucket``, S3 for the rest."""

    def __init__(
        self, folder: FolderObjects | None, local_bucket: str, s3: S3Objects | None, max_bytes: int
    ) -> None:
        super().__init__(max_bytes=max_bytes)
        self.folder, self.local_bucket, self.s3 = folder, local_bucket, s3

    def _reader(self, bucket: str) -> ObjectReader:
        reader = self.folder if bucket == self.local_bucket else self.s3
        if reader is None:
            where = "MEDIASEARCH_IMAGES_ROOT" if bucket == self.local_bucket else "S3"
            raise ConfigError(f"images of bucket {bucket!r} cannot be read: set {where}")
        return reader

    def get(self, bucket: str, key: str, *, if_match: str | None = None) -> StoredObject:
        return self._reader(bucket).get(bucket, key, if_match=if_match)

    def current_etag(self, bucket: str, key: str) -> str | None:
        return self._reader(bucket).current_etag(bucket, key)


_WHY = {
    "gone": "the original is gone",
    "stale": "the original changed since it was indexed (the indexer indexes the new version)",
    "retry": "could not be read or encoded now: run the reindex again",
}


class ReindexCommitter(Committer):
    """The pipeline's commit stage for a reindex: staged segments of the building generation."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: SegmentStore,
        generation: int,
        num_shards: int,
        config: BuildConfig,
        model_version: str,
    ) -> None:
        super().__init__(sessions, store, HashPartitioner(num_shards), config, model_version)
        self.generation_number = generation
        self.problems: list[tuple[int, str, str]] = []  # (image id, bucket/key, why it has no vector)

    def already_done(self, bucket: str, key: str, etag: str, sequencer: str | None = None) -> bool:
        return False  # the source left out what the generation holds

    def commit(self, items: Sequence[Item]) -> None:
        done = [it for it in items if it.outcome is None and it.vector is not None and not it.error]
        for it in items:
            if it.outcome is None:
                it.outcome = "failed" if it.error or it.vector is None else "indexed"
                if it.outcome == "failed" and not it.error:
                    it.error = "no vector"
            why = _WHY.get(it.outcome or "", it.error if it.outcome == "failed" else None)
            if why:
                self.problems.append((int(it.delivery.token), it.uri, why))
        if not done:
            return
        ids = np.array([it.delivery.token for it in done], dtype=np.int64)
        vectors = np.stack([it.vector for it in done if it.vector is not None]).astype(np.float32)
        records = self.stage_flat(ids, vectors, self.model_version)
        with translated("recording staged segments"), self.sessions.begin() as session:
            if not add_staged(session, records, self.generation_number):
                raise Conflict(f"generation {self.generation_number} is no longer building (switched?)")


@dataclass
class ReindexResult:
    generation: int
    model_version: str
    dim: int
    part: Part
    report: IndexReport
    completeness: Completeness
    problems: list[tuple[int, str, str]]  # (image id, bucket/key, why): this run's images without a vector


async def areindex(
    settings: Settings, part: Part = Part(), *, progress: ProgressCallback | None = None
) -> ReindexResult:
    """One part of a reindex with the model of ``settings`` (``MEDIASEARCH_MODEL_REPOSITORY``,
    ``MEDIASEARCH_MODEL_NAME``, ``MEDIASEARCH_ENCODER``) into its building generation."""
    async with contextlib.AsyncExitStack() as cleanup:
        engine = cleanup.enter_context(migrated_engine(settings.database_url))
        sessions = session_factory(engine)
        store = store_from_settings(settings, "indexer")
        encoder = await cleanup.enter_async_context(create_encoder(settings))
        with sessions.begin() as session:
            number = building_generation(
                session, encoder.model_version, encoder.embedding_dim, settings.model_name
            )
        source = IndexedImages(sessions, store, number, part)
        cleanup.callback(source.close)
        root = settings.images_root
        objects = ImageObjects(
            FolderObjects(root, max_bytes=settings.max_image_bytes) if root is not None else None,
            settings.indexer_local_bucket,
            S3Objects(s3_client(settings), max_bytes=settings.max_image_bytes),
            settings.max_image_bytes,
        )
        committer = ReindexCommitter(
            sessions,
            store,
            number,
            settings.num_shards,
            BuildConfig.from_settings(settings),
            encoder.model_version,
        )
        options = replace(PipelineOptions.from_settings(settings), thumbnail_size=0)  # the images have theirs
        report = await Pipeline(source, objects, encoder, committer, options, progress=progress).run()
        with sessions() as session:
            completeness = check_completeness(session, store, number)
        return ReindexResult(
            number,
            encoder.model_version,
            encoder.embedding_dim,
            part,
            report,
            completeness,
            committer.problems,
        )
