"""``mediasearch serve``: the search gateway (gRPC SearchService, HTTP/JSON and the search page,
Prometheus metrics)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the search API over gRPC and HTTP/JSON, and the search page (cluster or embedded)",
        description=(
            "Serve SearchText, SearchImage, GetImage and Stats over gRPC, with health (reflection: "
            "MEDIASEARCH_GATEWAY_REFLECTION), the same API as HTTP/JSON beside the search page "
            "(MEDIASEARCH_GATEWAY_HTTP_PORT, docs/http-api.md), and Prometheus metrics over HTTP. "
            "API keys are required in cluster mode (mediasearch keys create; MEDIASEARCH_GATEWAY_AUTH), "
            "TLS from MEDIASEARCH_GATEWAY_TLS_CERT/KEY (docs/security.md). Cluster mode when "
            "MEDIASEARCH_SHARD_ADDRESSES is set "
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
    p.add_argument(
        "--http-port",
        type=int,
        help="HTTP/JSON API and search page port; 0 picks a free one, -1 turns it off "
        "(MEDIASEARCH_GATEWAY_HTTP_PORT)",
    )
    p.add_argument(
        "--port-file", type=Path, help="write 'GRPC_PORT METRICS_PORT HTTP_PORT' here once serving"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="serve a non-loopback address without API keys (anyone who reaches it can search)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from mediasearch.gateway.app import Gateway, serve_gateway
    from mediasearch.requestlog import configure_logging

    settings = settings.with_overrides(gateway_host=args.host, gateway_insecure=args.insecure or None)
    level = "DEBUG" if args.verbose else settings.log_level
    configure_logging(logging.getLevelNamesMapping()[level], json_lines=settings.gateway_log_json)

    def ready(gateway: Gateway) -> None:
        page = f", search page and HTTP/JSON API on {gateway.page_url}" if gateway.page_url else ""
        print(
            f"search gateway ({gateway.mode}) on {gateway.address}{page}, metrics on "
            f"http://{settings.gateway_host}:{gateway.metrics_port}/metrics; Ctrl-C stops",
            flush=True,
        )

    serve_gateway(
        settings,
        port=args.port,
        metrics_port=args.metrics_port,
        http_port=args.http_port,
        port_file=args.port_file,
        on_ready=ready,
    )
    return 0
