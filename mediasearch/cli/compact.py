"""``mediasearch compact``: merge small segments of shards, apply deletes, collect garbage."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mediasearch.vector_index.compactor import CompactionResult, Compactor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compact",
        help="merge a shard's small segments into one trained segment and drop deleted ids",
        description=(
            "Merge the small segments of each shard into one trained IVF-HNSW segment (flat when "
            "small), drop tombstoned vectors, publish the new segment and retire the old ones in "
            "one transaction, then delete unreferenced segment files older than the grace period. "
            "Safe to kill at any point: run it again. Unset options come from MEDIASEARCH_* settings."
        ),
    )
    p.add_argument("--shard", type=int, action="append", help="shard to compact (repeatable; default: all)")
    p.add_argument("--database-url", help="metadata database (MEDIASEARCH_DATABASE_URL)")
    p.add_argument(
        "--store-url", help="segment store, file://... or s3://... (MEDIASEARCH_SEGMENT_STORE_URL)"
    )
    p.add_argument("--min-segments", type=int, help="compact once a shard has this many small segments")
    p.add_argument("--force", action="store_true", help="compact even one segment (to apply deletes)")
    p.add_argument(
        "--gc-grace", type=float, help="seconds unreferenced files are kept (MEDIASEARCH_GC_GRACE_S)"
    )
    p.add_argument(
        "--every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep running: a round over the shards every SECONDS until SIGTERM/Ctrl-C "
        "(what a deployment runs beside the indexer; default: one round, then exit)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mediasearch.metadata.db import make_engine, migrate, session_factory
    from mediasearch.settings import load_settings
    from mediasearch.vector_index.builder import BuildConfig
    from mediasearch.vector_index.compactor import Compactor
    from mediasearch.vector_index.store import open_store

    overrides = {
        "database_url": args.database_url,
        "segment_store_url": args.store_url,
        "compact_min_segments": args.min_segments,
        "gc_grace_s": args.gc_grace,
    }
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    engine = make_engine(settings.database_url)
    migrate(engine)
    store = open_store(
        settings.segment_store_url,
        cache_dir=Path(settings.segment_cache_dir) / "compactor",
        endpoint_url=settings.s3_endpoint_url,
    )
    compactor = Compactor(
        session_factory(engine),
        store,
        BuildConfig.from_settings(settings),
        min_segments=settings.compact_min_segments,
        gc_grace_s=settings.gc_grace_s,
    )
    shards = args.shard or list(range(settings.num_shards))
    if args.every <= 0:
        for shard in shards:
            _report(compactor.compact(shard, force=args.force))
        return 0
    return _keep_compacting(compactor, shards, args.every, force=args.force)


def _report(result: CompactionResult) -> None:
    print(
        f"shard {result.shard}: merged {len(result.merged)} segments -> {result.new_segment or '-'} "
        f"({result.vectors} vectors, {result.dropped} deleted dropped, "
        f"{len(result.garbage)} files collected)",
        flush=True,
    )


def _keep_compacting(compactor: Compactor, shards: list[int], every_s: float, *, force: bool) -> int:
    """Rounds until SIGTERM/SIGINT; a failed round (database or store unreachable) is logged and
    the next one tries again. Stopping between rounds or killing mid-compaction is equally safe."""
    import logging
    import signal
    import threading

    from mediasearch.errors import MediaSearchError

    log = logging.getLogger("mediasearch.compact")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"compacting shards {shards} every {every_s:g}s; Ctrl-C stops", flush=True)
    while not stop.is_set():
        for shard in shards:
            if stop.is_set():
                break
            try:
                result = compactor.compact(shard, force=force)
            except MediaSearchError as exc:
                log.warning("compacting shard %d failed, retrying next round: %s", shard, exc)
                continue
            if result.merged or result.garbage:
                _report(result)
        stop.wait(every_s)
    return 0
