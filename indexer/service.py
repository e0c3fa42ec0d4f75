"""Wiring: settings -> database, segment store, partitioner, encoder -> a :class:`Pipeline` run.

The three entry points (:mod:`~mediasearch.indexer.folder`, :mod:`~mediasearch.indexer.backfill`,
:mod:`~mediasearch.indexer.worker`) differ only in their source and object reader; everything else is
built here from the same settings.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from mediasearch import aws
from mediasearch.encoders.base import Encoder
from mediasearch.encoders.factory import create_encoder
from mediasearch.indexer.commit import Committer
from mediasearch.indexer.dual_write import ShadowEncoder
from mediasearch.indexer.items import IndexReport
from mediasearch.indexer.metrics import IndexerMetrics
from mediasearch.indexer.runner import Pipeline, PipelineOptions, ProgressCallback
from mediasearch.indexer.source import Source
from mediasearch.metadata.db import migrated_engine, session_factory
from mediasearch.objects import ObjectReader
from mediasearch.settings import Settings
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.partition import make_partitioner
from mediasearch.vector_index.store import store_from_settings
from mediasearch.vector_index.upgrade import live_model_settings


def s3_client(settings: Settings) -> Any:
    """The indexer's S3 client: a pooled connection per download in flight, and a few more."""
    return aws.client(
        "s3", endpoint_url=settings.s3_endpoint_url, pool=settings.indexer_fetch_concurrency + 4
    )


async def run_pipeline(
    settings: Settings,
    source: Source,
    objects: ObjectReader,
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
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback(source.close)
        engine = cleanup.enter_context(migrated_engine(settings.database_url))
        store = store_from_settings(settings, "indexer")
        if encoder is None:  # this run's own, with the live generation's model: started here, closed after
            model = live_model_settings(settings, session_factory(engine))
            encoder = await cleanup.enter_async_context(create_encoder(model))
        committer = Committer(
            session_factory(engine),
            store,
            make_partitioner(settings.partitioner, settings.num_shards),
            BuildConfig.from_settings(settings),
            encoder.model_version,
            objects=objects,
        )
        shadow = ShadowEncoder(settings, session_factory(engine), encoder)  # dual write during a reindex
        cleanup.push_async_callback(shadow.close)
        pipeline = Pipeline(
            source,
            objects,
            encoder,
            committer,
            PipelineOptions.from_settings(settings),
            progress=progress,
            metrics=metrics,
            shadow=shadow,
        )
        return await pipeline.run(stop, idle_exit_s)
