"""``mediasearch backfill s3://bucket/prefix``: index the objects of a bucket that are missing."""

from __future__ import annotations

import argparse

from mediasearch.cli._indexing import add_common, print_report, settings_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backfill",
        help="index the objects under s3://bucket/prefix that are not indexed yet",
        description=(
            "List s3://BUCKET/PREFIX, leave out every object version already recorded (indexed, "
            "failed or removed) and index the rest through the same pipeline as live S3 events. "
            "Resumable: interrupt it and run it again. A progress bar (count, rate, ETA) goes to "
            "stderr. The S3 endpoint comes from MEDIASEARCH_S3_ENDPOINT_URL (or AWS's own "
            "configuration); unset options come from MEDIASEARCH_* settings."
        ),
    )
    p.add_argument("url", help="s3://bucket or s3://bucket/prefix")
    p.add_argument("--s3-endpoint-url", help="S3-compatible endpoint (MEDIASEARCH_S3_ENDPOINT_URL)")
    add_common(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from indexer.backfill import backfill
    from indexer.progress import ProgressBar

    if not args.no_progress:  # the bar says it better than one log line per batch
        logging.getLogger("indexer.stages").setLevel(logging.WARNING)
    settings = settings_from(args, s3_endpoint_url=args.s3_endpoint_url)
    bar = None if args.no_progress else ProgressBar("backfill")
    report = backfill(settings, args.url, progress=bar)
    if bar is not None:
        bar.close(report, report.processed + report.retried)
    print_report(report)
    return 0 if report.retried == 0 else 1
