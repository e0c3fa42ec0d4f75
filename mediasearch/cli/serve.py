"""``mediasearch serve``: the search gateway (gRPC SearchService + Prometheus metrics)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the gRPC search API (cluster or embedded, by settings)",
        description=(
            "Serve SearchText, SearchImage, GetImage and Stats over gRPC, with health and reflection, "
            "and Prometheus metrics over HTTP. Cluster mode when MEDIASEARCH_SHARD_ADDRESSES is set "
            "(shard servers, MEDIASEARCH_ENCODER=triton, PostgreSQL); otherwise embedded (in-process "
            "shards over the manifest in MEDIASEARCH_DATABASE_URL, the local encoder). Stops cleanly "
            "on Ctrl-C or SIGTERM."
        ),
    )
    p.add_argument("--host", help="address to bind (MEDIASEARCH_GATEWAY_HOST)")
    p.add_argument("--port", type=int, help="gRPC port; 0 picks a free one (MEDIASEARCH_GATEWAY_PORT)")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="Prometheus port; 0 picks a free one (MEDIASEARCH_GATEWAY_METRICS_PORT)",
    )
    p.add_argument("--port-file", type=Path, help="write 'GRPC_PORT METRICS_PORT' here once serving")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from mediasearch.gateway.app import start_gateway
    from mediasearch.requestlog import configure_logging
    from mediasearch.settings import load_settings

    settings = load_settings(**({"gateway_host": args.host} if args.host else {}))
    configure_logging(logging.DEBUG if args.verbose else logging.INFO, json_lines=settings.gateway_log_json)

    async def serve() -> None:
        gateway = await start_gateway(settings, port=args.port, metrics_port=args.metrics_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.port_file:
            args.port_file.write_text(f"{gateway.port} {gateway.metrics_port}")
        print(
            f"search gateway ({gateway.mode}) on {gateway.address}, metrics on "
            f"http://{settings.gateway_host}:{gateway.metrics_port}/metrics; Ctrl-C stops",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await gateway.stop()

    asyncio.run(serve())
    return 0
