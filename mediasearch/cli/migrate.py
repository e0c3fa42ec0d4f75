"""``mediasearch migrate``: bring the metadata database to the current schema."""

from __future__ import annotations

import argparse

from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "migrate",
        help="create or upgrade the metadata database's tables (a deployment's pre-install hook)",
        description=(
            "Run the database migrations to the newest schema and print the revision. Idempotent, "
            "and safe when several run at once (PostgreSQL serialises them with an advisory lock). "
            "Every service also migrates when it starts; a deployment runs this first, once, so "
            "that a failed migration stops the rollout instead of every pod."
        ),
    )
    p.add_argument("--database-url", help="metadata database (MEDIASEARCH_DATABASE_URL)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.metadata.db import migrated_engine, schema_revision

    settings = settings.with_overrides(database_url=args.database_url)
    with migrated_engine(settings.database_url) as engine:
        revision = schema_revision(engine)
    print(f"metadata database at revision {revision}")
    return 0
