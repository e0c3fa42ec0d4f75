"""The long-running SQS worker: ``mediasearch indexer``.

Reads ``MEDIASEARCH_INDEXER_QUEUE_URL`` (and the DLQ, endpoints, database and segment store) from
the settings and runs until SIGTERM/SIGINT (Kubernetes stops pods with SIGTERM): it then stops
receiving, finishes and commits what is in flight, acknowledges it and exits. Anything not
acknowledged is redelivered by SQS to another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from mediasearch import aws
from mediasearch.encoders.base import Encoder
from mediasearch.errors import ConfigError
from mediasearch.indexer.items import IndexReport
from mediasearch.indexer.metrics import IndexerMetrics
from mediasearch.indexer.runner import ProgressCallback
from mediasearch.indexer.service import run_pipeline, s3_client
from mediasearch.indexer.sqs import SqsSource
from mediasearch.objects import S3Objects
from mediasearch.settings import Settings

log = logging.getLogger(__name__)


def sqs_source(settings: Settings) -> SqsSource:
    if not settings.indexer_queue_url:
        raise ConfigError("no queue: set MEDIASEARCH_INDEXER_QUEUE_URL (or pass --queue-url)")
    client = aws.client("sqs", endpoint_url=settings.sqs_endpoint_url or settings.s3_endpoint_url)
    return SqsSource(
        client,
        settings.indexer_queue_url,
        wait_time_s=settings.indexer_wait_time_s,
        visibility_timeout_s=settings.indexer_visibility_timeout_s,
        max_receives=settings.indexer_max_receives,
        dlq_url=settings.indexer_dlq_url,
        retry_delay_s=settings.indexer_retry_delay_s,
    )


async def arun_worker(
    settings: Settings,
    *,
    encoder: Encoder | None = None,
    stop: asyncio.Event | None = None,
    idle_exit_s: float | None = None,
    progress: ProgressCallback | None = None,
) -> IndexReport:
    """Consume the queue until ``stop`` is set, a signal arrives, or it was idle ``idle_exit_s``."""
    source = sqs_source(settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    log.info("indexer: consuming %s", settings.indexer_queue_url)
    metrics = IndexerMetrics()
    if settings.indexer_metrics_port:
        port = metrics.serve(settings.indexer_metrics_host, settings.indexer_metrics_port)
        log.info("indexer: Prometheus metrics on http://%s:%d/metrics", settings.indexer_metrics_host, port)
    report = await run_pipeline(
        settings,
        source,
        S3Objects(s3_client(settings), max_bytes=settings.max_image_bytes),
        encoder=encoder,
        stop=stop,
        idle_exit_s=idle_exit_s,
        progress=progress,
        metrics=metrics,
    )
    metrics.stop()
    log.info("indexer: stopped; %s; %d poison messages", report.summary(), source.poisoned)
    return report


def run_worker(settings: Settings, *, idle_exit_s: float | None = None) -> IndexReport:
    return asyncio.run(arun_worker(settings, idle_exit_s=idle_exit_s))
