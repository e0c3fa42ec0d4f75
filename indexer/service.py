"""Wiring: settings -> database, segment store, partitioner, encoder -> a :class:`Pipeline` run.

The three entry points (:mod:`~mediasearch.indexer.folder`, :mod:`~mediasearch.indexer.backfill`,
:mod:`~mediasearch.indexer.worker`) differ only in their source and fetcher; everything else is
built here from the same settings.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from mediasearch.encoders.base import Encoder
from mediasearch.encoders.factory import create_encoder
from mediasearch.indexer.commit import Committer
from mediasearch.indexer.fetch import Fetcher
from mediasearch.indexer.items import IndexReport
from mediasearch.indexer.metrics import IndexerMetrics
from mediasearch.indexer.runner import Pipeline, PipelineOptions, ProgressCallback
from mediasearch.indexer.source import Source
from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.settings import Settings
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.partition import make_partitioner
from mediasearch.vector_index.store import open_store


def pipeline_options(settings: Settings) -> PipelineOptions:
    return PipelineOptions(
        batch_size=settings.indexer_batch_size,
        batch_wait_s=settings.indexer_batch_wait_ms / 1000.0,
        fetch_concurrency=settings.indexer_fetch_concurrency,
        queue_items=settings.indexer_queue_items,
        commit_max_items=settings.indexer_commit_max_items,
        decode_threads=settings.image_decode_threads,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
    )


async def run_pipeline(
    settings: Settings,
    source: Source,
    fetcher: Fetcher,
    *,
    encoder: Encoder | None = None,
    progress: ProgressCallback | None = None,
    stop: asyncio.Event | None = None,
    idle_exit_s: float | None = None,
    metrics: IndexerMetrics | None = None,
) -> IndexReport:
    """Run ``source`` through the pipeline until it is exhausted (or ``stop``/idle).

    ``encoder``, when given, must already be started (``async with``) and is left open; otherwise
    one is created from the settings (``MEDIASEARCH_ENCODER``) for this run. The database is
    migrated first (idempotent).
    """
    engine = make_engine(settings.database_url)
    own_encoder = encoder is None
    try:
        migrate(engine)
        store = open_store(
            settings.segment_store_url,
            cache_dir=Path(settings.segment_cache_dir) / "indexer",
            endpoint_url=settings.s3_endpoint_url,
        )
        if encoder is None:
            encoder = create_encoder(settings)
            await encoder.start()
        committer = Committer(
            session_factory(engine),
            store,
            make_partitioner(settings.partitioner, settings.num_shards),
            BuildConfig.from_settings(settings),
            encoder.model_version,
        )
        pipeline = Pipeline(
            source,
            fetcher,
            encoder,
            committer,
            pipeline_options(settings),
            progress=progress,
            metrics=metrics,
        )
        return await pipeline.run(stop, idle_exit_s)
    finally:
        if own_encoder and encoder is not None:
            await encoder.close()
        source.close()
        engine.dispose()
