"""``mediasearch compact``: build index generations when due, merge small segments of shards,
apply deletes, collect garbage."""

from __future__ import annotations

import argparse

from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compact",
        help="build index generations when due, merge small segments, drop deleted ids",
        description=(
            "First, when one is due, build the next index generation: train one coarse quantizer on "
            "the stored vectors, pack its lists into the shards by size, rewrite every vector into "
            "its shard's lists and switch in one transaction (due: the first once the index holds "
            "MEDIASEARCH_INDEX_GENERATION_MIN vectors; then when the largest shard exceeds "
            "MEDIASEARCH_INDEX_REBALANCE_IMBALANCE x the mean, the index grew "
            "MEDIASEARCH_INDEX_REBALANCE_GROWTH x, or the shard count changed). Then merge the small "
            "segments of each shard, drop tombstoned vectors, publish the merged segment and retire "
            "its inputs in one transaction, and delete unreferenced files older than the grace "
            "period. Safe to kill at any point: run it again. Unset options come from MEDIASEARCH_* "
            "settings."
        ),
    )
    p.add_argument("--shard", type=int, action="append", help="shard to compact (repeatable; default: all)")
    p.add_argument("--database-url", help="metadata database (MEDIASEARCH_DATABASE_URL)")
    p.add_argument(
        "--store-url", help="segment store, file://... or s3://... (MEDIASEARCH_SEGMENT_STORE_URL)"
    )
    p.add_argument(
        "--min-segments",
        type=int,
        help="compact once a shard has this many small segments (MEDIASEARCH_COMPACT_MIN_SEGMENTS)",
    )
    p.add_argument("--force", action="store_true", help="compact even one segment (to apply deletes)")
    p.add_argument(
        "--rebalance",
        action="store_true",
        help="build a new index generation now, due or not (a fresh quantizer and list assignment)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="with --every: serve /metrics here (MEDIASEARCH_COMPACTOR_METRICS_PORT)",
    )
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


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.indexer.compaction import compact, describe, keep_compacting

    settings = settings.with_overrides(
        database_url=args.database_url,
        segment_store_url=args.store_url,
        compact_min_segments=args.min_segments,
        gc_grace_s=args.gc_grace,
        compactor_metrics_port=args.metrics_port,
    )
    if args.every > 0:
        keep_compacting(settings, args.shard, args.every, force=args.force)
        return 0
    for result in compact(
        settings,
        args.shard,
        force=args.force,
        rebalance=args.rebalance,
        say=lambda line: print(line, flush=True),
    ):
        print(describe(result), flush=True)
    return 0
