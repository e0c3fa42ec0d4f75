"""``mediasearch compact``: merge small segments of shards, apply deletes, collect garbage."""

from __future__ import annotations

import argparse


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mediasearch.index.builder import BuildConfig
    from mediasearch.index.compactor import Compactor
    from mediasearch.index.store import open_store
    from mediasearch.metadata.db import make_engine, migrate, session_factory
    from mediasearch.settings import load_settings

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
    for shard in args.shard or range(settings.num_shards):
        result = compactor.compact(shard, force=args.force)
        print(
            f"shard {shard}: merged {len(result.merged)} segments -> {result.new_segment or '-'} "
            f"({result.vectors} vectors, {result.dropped} deleted dropped, "
            f"{len(result.garbage)} files collected)"
        )
    return 0
