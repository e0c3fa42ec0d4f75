"""``mediasearch generation``: the index generations in the manifest (model, width, vectors,
state); switch to a reindexed one, roll back."""

from __future__ import annotations

import argparse
from typing import Any

from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generation",
        help="list the index generations; switch to a reindexed one; roll back",
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
    switch = actions.add_parser(
        "switch",
        parents=[common],
        help="make a reindexed generation live, in one transaction (refused while it lacks an image)",
        description=(
            "Make generation N, built by `mediasearch reindex`, the one searches use: in one "
            "transaction, after the completeness check (every indexed image has exactly one vector "
            "in it, or the switch is refused with the ids that are missing). The generation served "
            "until now is retired and its files kept for a rollback for MEDIASEARCH_GENERATION_KEEP_S. "
            "Gateways and shard servers follow within their poll interval."
        ),
    )
    switch.add_argument("number", type=int, help="the generation (mediasearch generation list)")
    give_up = actions.add_parser(
        "abandon",
        parents=[common],
        help="give up the generation a reindex is building (its staged files are garbage-collected)",
    )
    give_up.add_argument("number", type=int, help="the building generation (mediasearch generation list)")
    back = actions.add_parser(
        "rollback",
        parents=[common],
        help="return to the generation the last switch retired, in one transaction",
    )
    back.add_argument(
        "--accept-missing",
        action="store_true",
        help="roll back even though images indexed since the switch have no vector there",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.metadata.db import migrated_engine, session_factory
    from mediasearch.metadata.segment_manifest import exact_layout, list_generations

    settings = settings.with_overrides(database_url=args.database_url)
    if args.action in ("switch", "rollback"):
        return _switch(args, settings)
    if args.action == "abandon":
        return _abandon(args, settings)
    with migrated_engine(settings.database_url) as engine, session_factory(engine)() as session:
        generations = list_generations(session)
        exact = exact_layout(session)
    _print(generations, exact)
    return 0


def _switch(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.metadata.db import migrated_engine, session_factory, translated
    from mediasearch.vector_index.store import store_from_settings
    from mediasearch.vector_index.upgrade import rollback, switch_to

    store = store_from_settings(settings, "compactor")
    with (
        migrated_engine(settings.database_url) as engine,
        translated("switching generations"),
        session_factory(engine).begin() as session,
    ):
        if args.action == "switch":
            done = switch_to(session, store, args.number, settings.num_shards)
        else:
            done = rollback(
                session, store, settings.generation_keep_s, settings.num_shards,
                accept_missing=args.accept_missing,
            )  # fmt: skip
    print(
        f"generation {done.number} (model {done.model_version}) is live: {done.vectors:,} vectors; "
        f"generation {done.previous} retired (kept for a rollback for {settings.generation_keep_s:g} s)"
        + (f"; {done.missing} images indexed since the switch have no vector" if done.missing else "")
        + "; gateways and shards follow within their poll interval"
    )
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


def _abandon(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.metadata.db import migrated_engine, session_factory, translated
    from mediasearch.vector_index.upgrade import abandon

    with (
        migrated_engine(settings.database_url) as engine,
        translated("abandoning a generation"),
        session_factory(engine).begin() as session,
    ):
        held = abandon(session, args.number)
    print(
        f"generation {args.number} abandoned: its {held:,} staged vectors are deleted after the grace period"
    )
    return 0
