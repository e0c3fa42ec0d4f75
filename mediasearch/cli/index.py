"""``mediasearch index FOLDER``: index the images of a local folder (the embedded default)."""

from __future__ import annotations

import argparse

from mediasearch.cli._indexing import add_common, run_with_progress, settings_from
from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="index the image files of a local folder (embedded mode, the demo)",
        description=(
            "Index every image file under FOLDER (jpg, png, gif, bmp, webp, tiff; hidden files "
            "skipped): decode, encode with the exported model, write segments and image rows. "
            "The key of a file is its path relative to FOLDER, its version the SHA-256 of its "
            "content. Run it again to index only what is new or changed; safe to interrupt. "
            "Unusable files are recorded as failed with the reason. A progress bar (count, rate, "
            "ETA) goes to stderr. Unset options come from MEDIASEARCH_* settings."
        ),
    )
    p.add_argument("folder", help="folder of images (searched recursively)")
    p.add_argument("--bucket", help="bucket name recorded for these files (MEDIASEARCH_INDEXER_LOCAL_BUCKET)")
    p.add_argument(
        "--prune",
        action="store_true",
        help="also remove from the index the files of this bucket that are no longer in FOLDER "
        "(index only this folder under that bucket name)",
    )
    add_common(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.indexer.folder import index_folder

    settings = settings_from(args, settings)
    return run_with_progress(
        args,
        "indexing",
        lambda bar: index_folder(settings, args.folder, progress=bar, bucket=args.bucket, prune=args.prune),
    )
