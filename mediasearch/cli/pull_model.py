"""``mediasearch pull-model``: fetch a model's manifest and tokenizer for a service (an init step)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pull-model",
        help="copy a model repository's manifest and tokenizer (from S3) into a local folder",
        description=(
            "Services read the model manifest and the tokenizer from MEDIASEARCH_MODEL_REPOSITORY, a "
            "local folder; Triton reads the graphs straight from S3. In a cluster an init container "
            "runs this to fill that folder: SOURCE is s3://bucket/prefix (or a folder). The S3 "
            "endpoint comes from MEDIASEARCH_S3_ENDPOINT_URL or AWS's own configuration."
        ),
    )
    p.add_argument("source", help="s3://bucket/prefix of the exported model repository (or a folder)")
    p.add_argument("--out", type=Path, help="destination folder (MEDIASEARCH_MODEL_REPOSITORY)")
    p.add_argument("--name", help="model name prefix (MEDIASEARCH_MODEL_NAME)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.model_manifest import pull_model_files

    settings = settings.with_overrides(model_repository=args.out, model_name=args.name)
    manifest = pull_model_files(
        args.source, settings.model_name, settings.model_repository, endpoint_url=settings.s3_endpoint_url
    )
    print(f"model {manifest.version} ({manifest.source}) -> {settings.model_repository}/")
    return 0
