"""The compactor service: ``mediasearch compact``, one round or a round every N seconds.

A deployment runs it beside the indexer (``--every``): the indexer writes one small segment per
shard and batch, and the compactor merges them by size tier and drops deleted vectors
(:class:`~mediasearch.vector_index.compactor.Compactor` does the work; it is safe to kill at any
point). Each round first asks :meth:`Rebalancer.due` whether the index needs a new generation (the
first one once it holds ``index_generation_min`` vectors; a rebalance when shards are uneven, the
index has grown, or the shard count changed) and builds it before merging.
SIGTERM or SIGINT stops it between rounds; a round that fails (the database or the store
unreachable) is logged and the next one tries again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

from mediasearch.errors import MediaSearchError
from mediasearch.indexer.metrics import CompactorMetrics
from mediasearch.metadata.db import migrated_engine, session_factory
from mediasearch.settings import Settings
from mediasearch.signals import StopSignals
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.compactor import CompactionResult, Compactor
from mediasearch.vector_index.rebalance import Rebalancer, RebalanceResult
from mediasearch.vector_index.store import store_from_settings

log = logging.getLogger(__name__)


@contextlib.contextmanager
def open_compactor(settings: Settings) -> Iterator[tuple[Compactor, Rebalancer]]:
    """A compactor and a rebalancer over the database and segment store of ``settings`` (migrated
    first)."""
    with migrated_engine(settings.database_url) as engine:
        sessions = session_factory(engine)
        store = store_from_settings(settings, "compactor")
        compactor = Compactor(
            sessions,
            store,
            BuildConfig.from_settings(settings),
            min_segments=settings.compact_min_segments,
            max_vectors=settings.compact_max_vectors,
            gc_grace_s=settings.gc_grace_s,
            keep_s=settings.generation_keep_s,
        )
        yield compactor, Rebalancer.from_settings(settings, sessions, store)


def rebalance_if_due(rebalancer: Rebalancer, *, force: bool = False) -> RebalanceResult | None:
    """Build the next index generation when one is due (always with ``force``)."""
    reason = "requested" if force else rebalancer.due()
    if reason is None:
        return None
    log.info("building a new index generation: %s", reason)
    return rebalancer.run(reason)


def describe_rebalance(result: RebalanceResult) -> str:
    return (
        f"index generation {result.generation} live ({result.reason}): {result.vectors} vectors in "
        f"{result.nlist} lists over {result.segments} segments, imbalance {result.imbalance:.3f}, "
        f"{result.retired} segments retired, {result.seconds:.1f}s"
    )


def describe(result: CompactionResult) -> str:
    """One line for operators: what a round did to a shard."""
    return (
        f"shard {result.shard}: merged {len(result.merged)} segments -> {result.new_segment or '-'} "
        f"({result.vectors} vectors, {result.dropped} deleted dropped, "
        f"{len(result.garbage)} files collected)"
    )


def compact(
    settings: Settings,
    shards: Sequence[int] | None = None,
    *,
    force: bool = False,
    rebalance: bool = False,
    say: Callable[[str], None] = log.info,
) -> list[CompactionResult]:
    """One round over ``shards`` (default: all of ``MEDIASEARCH_NUM_SHARDS``), after building a
    new index generation if one is due (or ``rebalance`` asks for it)."""
    with open_compactor(settings) as (compactor, rebalancer):
        built = rebalance_if_due(rebalancer, force=rebalance)
        if built is not None:
            say(describe_rebalance(built))
        return [compactor.compact(s, force=force) for s in shards or range(settings.num_shards)]


def keep_compacting(
    settings: Settings,
    shards: Sequence[int] | None,
    every_s: float,
    *,
    force: bool = False,
    stop: threading.Event | None = None,
) -> None:
    """A round every ``every_s`` seconds until ``stop`` is set or SIGTERM/SIGINT arrives (when
    called from the main thread). Stopping between rounds or killing mid-compaction is equally safe."""
    stop, signals = stop or threading.Event(), StopSignals()
    with signals if threading.current_thread() is threading.main_thread() else contextlib.nullcontext():
        _keep_compacting(settings, shards, every_s, force, lambda wait_s: signals.wait(wait_s, also=stop))


def _keep_compacting(
    settings: Settings,
    shards: Sequence[int] | None,
    every_s: float,
    force: bool,
    stopped: Callable[[float], bool],
) -> None:
    targets = list(shards or range(settings.num_shards))
    log.info("compacting shards %s every %gs; Ctrl-C stops", targets, every_s)
    metrics = CompactorMetrics()
    if settings.compactor_metrics_port:
        port = metrics.serve(settings.indexer_metrics_host, settings.compactor_metrics_port)
        log.info("compactor: Prometheus metrics on http://%s:%d/metrics", settings.indexer_metrics_host, port)
    try:
        with open_compactor(settings) as (compactor, rebalancer):
            while not stopped(0.0):
                _rebalance_round(rebalancer)
                for shard in targets:
                    if stopped(0.0):
                        break
                    _round(compactor, shard, force, metrics)
                metrics.last_round.set_to_current_time()
                stopped(every_s)
    finally:
        metrics.stop()


def _rebalance_round(rebalancer: Rebalancer) -> None:
    try:
        built = rebalance_if_due(rebalancer)
    except MediaSearchError as exc:
        log.warning("building a new index generation failed, retrying next round: %s", exc)
        return
    if built is not None:
        log.info("%s", describe_rebalance(built))


def _round(compactor: Compactor, shard: int, force: bool, metrics: CompactorMetrics) -> None:
    try:
        result = compactor.compact(shard, force=force)
    except MediaSearchError as exc:
        metrics.rounds.labels("failed").inc()
        log.warning("compacting shard %d failed, retrying next round: %s", shard, exc)
        return
    metrics.rounds.labels("merged" if result.merged else "idle").inc()
    metrics.merged.inc(len(result.merged))
    metrics.dropped.inc(result.dropped)
    if result.merged or result.garbage:
        log.info("%s", describe(result))
