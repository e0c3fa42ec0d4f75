"""``mediasearch shard-server``: serve one shard over gRPC, following the segment manifest."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shard-server",
        help="serve one shard's live segments over gRPC (Search, Stats, health)",
        description=(
            "Serve the live segments of one shard over gRPC. Follows the segment manifest in the "
            "metadata database (polling, plus LISTEN/NOTIFY on PostgreSQL) and serves a newly "
            "published segment within about a second; runs the database migrations on start. "
            "Unset options come from MEDIASEARCH_* settings."
        ),
    )
    p.add_argument("--shard", type=int, required=True, help="shard number to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument(
        "--port", type=int, default=7001, help="port to bind; 0 picks a free one (default: %(default)s)"
    )
    p.add_argument("--database-url", help="metadata database (MEDIASEARCH_DATABASE_URL)")
    p.add_argument(
        "--store-url", help="segment store, file://... or s3://... (MEDIASEARCH_SEGMENT_STORE_URL)"
    )
    p.add_argument("--cache-dir", help="local folder for downloaded segments (MEDIASEARCH_SEGMENT_CACHE_DIR)")
    p.add_argument(
        "--poll-interval", type=float, help="manifest poll interval, s (MEDIASEARCH_SHARD_POLL_INTERVAL_S)"
    )
    p.add_argument("--workers", type=int, default=8, help="search threads (default: %(default)s)")
    p.add_argument("--model-version", default=None, help="serve only segments of this model version")
    p.add_argument("--mmap-ivf", action="store_true", help="memory-map IVF segments (slower search)")
    p.add_argument("--no-listen", action="store_true", help="poll only, even on PostgreSQL")
    p.add_argument(
        "--port-file", help="write the bound port to this file once serving (for tests/supervisors)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    from pathlib import Path

    from mediasearch.gateway.shard_server import ShardServer
    from mediasearch.metadata.db import make_engine, migrate, session_factory
    from mediasearch.settings import load_settings
    from mediasearch.vector_index.follower import ManifestFollower
    from mediasearch.vector_index.shard import SearchParams, Shard
    from mediasearch.vector_index.store import open_store

    overrides = {
        "database_url": args.database_url,
        "segment_store_url": args.store_url,
        "segment_cache_dir": args.cache_dir,
        "shard_poll_interval_s": args.poll_interval,
    }
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    engine = make_engine(settings.database_url)
    migrate(engine)
    store = open_store(
        settings.segment_store_url,
        cache_dir=Path(settings.segment_cache_dir) / f"shard-{args.shard}",
        endpoint_url=settings.s3_endpoint_url,
    )
    shard = Shard(
        args.shard, store, model_version=args.model_version, mmap_ivf=args.mmap_ivf or settings.index_mmap_ivf
    )
    follower = ManifestFollower(
        shard, session_factory(engine), interval=settings.shard_poll_interval_s, listen=not args.no_listen
    )
    server = ShardServer(
        shard,
        follower,
        host=args.host,
        port=args.port,
        workers=args.workers,
        defaults=SearchParams(nprobe=settings.search_nprobe, ef_search=settings.search_ef),
    )
    port = server.start()
    if args.port_file:
        Path(args.port_file).write_text(str(port))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    logging.getLogger(__name__).info("shard-server %d ready on %s:%d", args.shard, args.host, port)
    server.wait()
    return 0
