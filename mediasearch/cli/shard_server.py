"""``mediasearch shard-server``: serve one shard over gRPC, following the segment manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shard-server",
        help="serve one shard's live segments over gRPC (Search, Stats, health)",
        description=(
            "Serve the live segments of one shard over gRPC. Follows the segment manifest in the "
            "metadata database (polling, plus LISTEN/NOTIFY on PostgreSQL) and serves a newly "
            "published segment within about a second; runs the database migrations on start. "
            "Stops cleanly on SIGTERM or Ctrl-C. Unset options come from MEDIASEARCH_* settings."
        ),
    )
    p.add_argument("--shard", type=int, required=True, help="shard number to serve")
    p.add_argument("--host", help="address to bind (MEDIASEARCH_SHARD_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind; 0 picks a free one (MEDIASEARCH_SHARD_PORT, 7001)")
    p.add_argument("--database-url", help="metadata database (MEDIASEARCH_DATABASE_URL)")
    p.add_argument(
        "--store-url", help="segment store, file://... or s3://... (MEDIASEARCH_SEGMENT_STORE_URL)"
    )
    p.add_argument("--cache-dir", help="local folder for downloaded segments (MEDIASEARCH_SEGMENT_CACHE_DIR)")
    p.add_argument(
        "--poll-interval", type=float, help="manifest poll interval, s (MEDIASEARCH_SHARD_POLL_INTERVAL_S)"
    )
    p.add_argument("--workers", type=int, help="search threads (MEDIASEARCH_SHARD_WORKERS, 8)")
    p.add_argument("--model-version", default=None, help="serve only segments of this model version")
    p.add_argument(
        "--mmap-ivf",
        action="store_true",
        help="memory-map IVF segments, slower search (MEDIASEARCH_INDEX_MMAP_IVF)",
    )
    p.add_argument("--no-listen", action="store_true", help="poll only, even on PostgreSQL")
    p.add_argument(
        "--port-file", type=Path, help="write the bound port to this file once serving (tests, supervisors)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.gateway.shard_server import serve_shard

    settings = settings.with_overrides(
        shard_host=args.host,
        shard_port=args.port,
        shard_workers=args.workers,
        database_url=args.database_url,
        segment_store_url=args.store_url,
        segment_cache_dir=args.cache_dir,
        shard_poll_interval_s=args.poll_interval,
        index_mmap_ivf=args.mmap_ivf or None,
    )
    serve_shard(
        settings,
        args.shard,
        model_version=args.model_version,
        listen=not args.no_listen,
        port_file=args.port_file,
    )
    return 0
