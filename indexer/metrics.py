"""Prometheus metrics of the indexer, in a registry of its own (tests run several pipelines in one
process), served over HTTP by :meth:`IndexerMetrics.serve` (``mediasearch indexer --metrics-port``).

- ``mediasearch_indexer_images_total{outcome}``: events finished, by outcome (indexed, failed,
  duplicate, removed, gone, stale, retry).
- ``mediasearch_indexer_stage_seconds{stage}``: one fetch, one decode (per image), one encoder
  call, one commit (per batch).
- ``mediasearch_indexer_batch_images``: images per encoder call.
- ``mediasearch_indexer_in_flight``: events received and not yet committed or retried.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram

from mediasearch.metrics import ServiceMetrics

STAGES = ("fetch", "decode", "encode", "commit")
OUTCOMES = ("indexed", "failed", "duplicate", "removed", "gone", "stale", "retry")
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


class IndexerMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.images = Counter(
            "mediasearch_indexer_images", "Events finished, by outcome", ["outcome"], registry=self.registry
        )
        self.stage = Histogram(
            "mediasearch_indexer_stage_seconds",
            "Duration of one pipeline step: fetch and decode per image, encode and commit per batch",
            ["stage"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.batch = Histogram(
            "mediasearch_indexer_batch_images",
            "Images per encoder call",
            buckets=_SIZES,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "mediasearch_indexer_in_flight", "Events received, not yet committed", registry=self.registry
        )
        for stage in STAGES:
            self.stage.labels(stage)
        for outcome in OUTCOMES:
            self.images.labels(outcome)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage.labels(stage).observe(time.perf_counter() - started)

    def finished(self, outcome: str | None) -> None:
        self.images.labels(outcome or "unknown").inc()


class CompactorMetrics(ServiceMetrics):
    """``mediasearch compact --every``: rounds by outcome, segments merged, deleted vectors dropped,
    and when the last round ended (a stalled compactor shows as an old timestamp)."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds = Counter(
            "mediasearch_compactor_shard_rounds",
            "Compaction rounds over one shard, by outcome (merged, idle, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.merged = Counter(
            "mediasearch_compactor_segments_merged",
            "Segments merged into larger ones",
            registry=self.registry,
        )
        self.dropped = Counter(
            "mediasearch_compactor_vectors_dropped",
            "Deleted vectors dropped by merges",
            registry=self.registry,
        )
        self.last_round = Gauge(
            "mediasearch_compactor_last_round_timestamp_seconds",
            "When the last round over all shards ended (unix seconds)",
            registry=self.registry,
        )
        for outcome in ("merged", "idle", "failed"):
            self.rounds.labels(outcome)
