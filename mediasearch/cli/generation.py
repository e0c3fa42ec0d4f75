"""``mediasearch generation``: the index generations in the manifest (model, width, vectors, state)."""

from __future__ import annotations

import argparse
from typing import Any

from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generation",
        help="list the index generations: model, width, vectors, lists, shards, state, created",
        description=(
            "An index generation is one trained coarse quantizer (model version, vector width, lists "
            "packed into shards) and the segments placed by it; `mediasearch compact` builds the next "
            "one when due and switches to it in one transaction. Before the first, the index is in "
            "its exact layout (flat segments, every shard asked). Reads MEDIASEARCH_DATABASE_URL."
        ),
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", help="metadata database (MEDIASEARCH_DATABASE_URL)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "list",
        parents=[common],
        help="every generation, newest first, and what the exact layout still serves",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.metadata.db import migrated_engine, session_factory
    from mediasearch.metadata.segment_manifest import exact_layout, list_generations

    settings = settings.with_overrides(database_url=args.database_url)
    with migrated_engine(settings.database_url) as engine, session_factory(engine)() as session:
        generations = list_generations(session)
        exact = exact_layout(session)
    _print(generations, exact)
    return 0


def _print(generations: list[Any], exact: dict[str, int]) -> None:
    from rich.console import Console
    from rich.table import Table

    def when(t: Any) -> str:
        return t.strftime("%Y-%m-%d %H:%M:%S") if t is not None else "-"

    import sys

    console = Console(width=None if sys.stdout.isatty() else 200)  # piped: no column cut to 80
    if not generations:
        console.print(
            "no index generation yet: the index is in its exact layout (flat segments, every shard asked)"
        )
    else:
        table = Table("generation", "state", "model", "width", "vectors", "lists", "shards", "imbalance",
                      "created", "retired")  # fmt: skip
        for g in generations:
            table.add_row(
                str(g.number), g.state, g.model_version, str(g.dim) if g.dim else "-", f"{g.vectors:,}",
                f"{g.nlist:,}", str(g.num_shards), f"{g.imbalance:.3f}", when(g.created), when(g.retired),
            )  # fmt: skip
        console.print(table)
    for version, count in sorted(exact.items()):
        console.print(f"exact layout (no generation): {count:,} vectors of model {version}")
