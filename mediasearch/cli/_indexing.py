"""Options shared by ``index``, ``backfill`` and ``indexer``: where the index lives and which
encoder runs; the progress bar and report of the one-shot commands. Anything not given on the
command line comes from ``MEDIASEARCH_*`` settings."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from mediasearch.settings import Settings


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", help="metadata database (MEDIASEARCH_DATABASE_URL)")
    p.add_argument(
        "--store-url", help="segment store, file://... or s3://... (MEDIASEARCH_SEGMENT_STORE_URL)"
    )
    p.add_argument("--model-repository", help="exported model repository (MEDIASEARCH_MODEL_REPOSITORY)")
    p.add_argument(
        "--encoder", choices=("local", "triton"), help="local ONNX Runtime or Triton (MEDIASEARCH_ENCODER)"
    )
    p.add_argument("--triton-url", help="Triton gRPC host:port (MEDIASEARCH_TRITON_GRPC_URL)")
    p.add_argument("--batch-size", type=int, help="images per encoder call (MEDIASEARCH_INDEXER_BATCH_SIZE)")


def settings_from(args: argparse.Namespace, settings: Settings, **extra: Any) -> Settings:
    """``settings`` with the common options (and ``extra``) that were given applied."""
    return settings.with_overrides(
        database_url=args.database_url,
        segment_store_url=args.store_url,
        model_repository=args.model_repository,
        encoder=args.encoder,
        triton_grpc_url=args.triton_url,
        indexer_batch_size=args.batch_size,
        **extra,
    )


def print_report(report: Any) -> None:
    print(report.summary())
    for uri, error in report.failures[:20]:
        print(f"  failed: {uri}: {error}")
    if len(report.failures) > 20:
        print(f"  ... and {report.failed - 20} more failed (status 'failed' in the images table)")


def run_with_progress(args: argparse.Namespace, label: str, index: Callable[[Any], Any]) -> int:
    """Run ``index(progress_bar_or_None)`` with the stderr bar (unless ``--no-progress``), then print
    the report; exit status 1 when some objects are left to retry."""
    from mediasearch.indexer.commit import stages
    from mediasearch.indexer.progress import ProgressBar

    if not args.no_progress:  # the bar says it better than one log line per batch
        stages.setLevel(logging.WARNING)
    bar = None if args.no_progress else ProgressBar(label)
    report = index(bar)
    if bar is not None:
        bar.close(report, report.processed + report.retried)
    print_report(report)
    return 0 if report.retried == 0 else 1
