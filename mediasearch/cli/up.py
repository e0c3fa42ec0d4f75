"""``mediasearch up``: the whole cluster on loopback until Ctrl-C (what ``make up`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up",
        help="run the whole cluster on loopback (moto S3+SQS, PostgreSQL, Triton, shards, indexer, gateway)",
        description=(
            "Start moto (S3 + SQS with the image bucket's notifications going to the indexer's queue), "
            "migrate the PostgreSQL database, start Triton over the model repository, the shard "
            "servers, the indexer and the search gateway, all on 127.0.0.1; restart any that crash; "
            "stop all of them cleanly on Ctrl-C or SIGTERM. Addresses go to WORKDIR/cluster.json, "
            "logs to WORKDIR/*.log."
        ),
    )
    p.add_argument("--repository", type=Path, help="exported model repository (MEDIASEARCH_MODEL_REPOSITORY)")
    p.add_argument(
        "--workdir", type=Path, default=Path(".up"), help="logs, caches, cluster.json (default: .up)"
    )
    p.add_argument(
        "--database-url",
        help="PostgreSQL database, created if missing (default: mediasearch_up on 127.0.0.1:5432)",
    )
    p.add_argument("--shards", type=int, help="number of shards (default: 2)")
    p.add_argument("--replicas", type=int, help="shard servers per shard (default: 1)")
    p.add_argument(
        "--gateways",
        type=int,
        help="search gateways (default: 1; clients may list them all, comma-separated)",
    )
    p.add_argument("--free-ports", action="store_true", help="pick free ports instead of the defaults")
    p.add_argument(
        "--no-indexer", action="store_true", help="start neither `mediasearch indexer` nor the compactor"
    )
    p.add_argument(
        "--auth",
        action="store_true",
        help="require API keys as a production gateway does; an admin key is made and printed",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.dev.cluster import ClusterOptions, DevCluster

    given = {
        "database_url": args.database_url,
        "num_shards": args.shards,
        "replicas": args.replicas,
        "gateways": args.gateways,
    }
    options = ClusterOptions(
        workdir=args.workdir,
        repository=args.repository or settings.model_repository,
        free_ports=args.free_ports,
        indexer=not args.no_indexer,
        compactor=not args.no_indexer,  # it merges what the indexer writes
        auth=args.auth,
        **{k: v for k, v in given.items() if v is not None},
    )

    def ready(info: dict[str, Any]) -> None:
        key = f" --api-key {info['api_key']}" if info.get("api_key") else ""
        print(
            f"cluster up: gateway {info['gateway']} · metrics {info['metrics']} · triton {info['triton']}\n"
            f"  search page and HTTP/JSON API: {info['page']}\n"
            f"  put images into s3://{info['bucket']} at {info['s3_endpoint']} (AWS keys: testing/testing);"
            f" logs in {info['logs']}/\n"
            f'  try: mediasearch query "two red circles"{key} --sheet results.png\n'
            "  Ctrl-C stops everything",
            flush=True,
        )

    try:
        DevCluster(options, settings).run(on_ready=ready)
    finally:
        print("cluster stopped", flush=True)
    return 0
