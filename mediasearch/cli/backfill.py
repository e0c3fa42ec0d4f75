"""``mediasearch backfill s3://bucket/prefix``: index the objects of a bucket that are missing."""

from __future__ import annotations

import argparse

from mediasearch.cli._indexing import add_common, run_with_progress, settings_from
from mediasearch.settings import Settings


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
    p.add_argument(
        "--prune",
        action="store_true",
        help="also remove from the index the keys under the prefix that the bucket no longer holds",
    )
    p.add_argument(
        "--part",
        metavar="I/N",
        help="index only part I (0-based) of N of the key space, split by a stable hash of the key "
        "(N runs share a bucket without overlap: a Kubernetes Indexed Job's pods)",
    )
    add_common(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.indexer.backfill import Part, backfill

    settings = settings_from(args, settings, s3_endpoint_url=args.s3_endpoint_url)
    part = Part.parse(args.part) if args.part else Part()
    label = "backfill" if part.count == 1 else f"backfill {part.index}/{part.count}"
    return run_with_progress(
        args, label, lambda bar: backfill(settings, args.url, progress=bar, prune=args.prune, part=part)
    )
