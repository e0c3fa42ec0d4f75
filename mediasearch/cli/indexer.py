"""``mediasearch indexer``: the long-running worker consuming S3 events from SQS."""

from __future__ import annotations

import argparse

from mediasearch.cli._indexing import add_common, settings_from
from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "indexer",
        help="consume S3 event notifications from SQS and index the images (cluster mode)",
        description=(
            "Long-poll the SQS queue that receives the bucket's S3 event notifications "
            "(ObjectCreated:* indexes, ObjectRemoved:* deletes; direct or through SNS). Each "
            "batch is downloaded, decoded, encoded, written as segments and recorded in one "
            "transaction; only then are its messages deleted. Poison messages go to the "
            "dead-letter queue (--dlq-url) or are left to the queue's redrive policy. Stops "
            "cleanly on SIGTERM or Ctrl-C. Settings come from MEDIASEARCH_* (queue: "
            "MEDIASEARCH_INDEXER_QUEUE_URL, endpoints: MEDIASEARCH_S3_ENDPOINT_URL, "
            "MEDIASEARCH_SQS_ENDPOINT_URL) and AWS's own configuration (region, credentials)."
        ),
    )
    p.add_argument("--queue-url", help="SQS queue URL (MEDIASEARCH_INDEXER_QUEUE_URL)")
    p.add_argument("--dlq-url", help="dead-letter queue URL (MEDIASEARCH_INDEXER_DLQ_URL)")
    p.add_argument("--s3-endpoint-url", help="S3-compatible endpoint (MEDIASEARCH_S3_ENDPOINT_URL)")
    p.add_argument("--sqs-endpoint-url", help="SQS endpoint (MEDIASEARCH_SQS_ENDPOINT_URL)")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port (MEDIASEARCH_INDEXER_METRICS_PORT)",
    )
    add_common(p)
    p.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="exit once the queue has been empty and nothing in flight for SECONDS (tests, batch jobs)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.indexer.worker import run_worker

    settings = settings_from(
        args,
        settings,
        indexer_queue_url=args.queue_url,
        indexer_dlq_url=args.dlq_url,
        s3_endpoint_url=args.s3_endpoint_url,
        sqs_endpoint_url=args.sqs_endpoint_url,
        indexer_metrics_port=args.metrics_port,
    )
    report = run_worker(settings, idle_exit_s=args.exit_when_idle)
    print(report.summary())
    return 0
