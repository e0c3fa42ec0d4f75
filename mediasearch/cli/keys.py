"""``mediasearch keys``: create, list and revoke the gateway's API keys."""

from __future__ import annotations

import argparse

from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keys",
        help="create, list and revoke API keys (the gateway's callers)",
        description=(
            "API keys live hashed in the metadata database (MEDIASEARCH_DATABASE_URL); every gateway "
            "re-reads them every few seconds, so a new key works and a revoked one is refused within "
            "5 s. Callers send 'authorization: Bearer <key>'. Scope search allows SearchText, "
            "SearchImage and GetImage; admin allows everything, Stats included."
        ),
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", help="metadata database (MEDIASEARCH_DATABASE_URL)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        parents=[common],
        help="make a new key and print it (once: only its hash is stored)",
        description="Make a new key. It is printed once, alone on the last line of output; store it now.",
    )
    create.add_argument("--name", required=True, help="who or what uses it, e.g. web-frontend")
    create.add_argument(
        "--scope", action="append", choices=("search", "admin"), required=True, help="search or admin"
    )
    create.add_argument(
        "--rate", type=float, help="requests per second for this key (default MEDIASEARCH_GATEWAY_RATE_RPS)"
    )
    create.add_argument(
        "--burst", type=int, help="burst above the rate (default MEDIASEARCH_GATEWAY_RATE_BURST)"
    )
    lister = actions.add_parser(
        "list", parents=[common], help="the keys: name, scopes, key prefix, created, last used"
    )
    lister.add_argument("--all", action="store_true", help="include revoked keys")
    revoke = actions.add_parser(
        "revoke", parents=[common], help="refuse a key from now on (every gateway within 5 s)"
    )
    revoke.add_argument("name", help="the key's name (mediasearch keys list)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.metadata.api_keys import create_key, list_keys, revoke_key
    from mediasearch.metadata.db import migrated_engine, session_factory

    settings = settings.with_overrides(database_url=args.database_url)
    with migrated_engine(settings.database_url) as engine:
        sessions = session_factory(engine)
        with sessions.begin() as session:
            if args.action == "create":
                key = create_key(session, args.name, args.scope, rate_rps=args.rate, burst=args.burst)
            elif args.action == "revoke":
                revoke_key(session, args.name)
            else:
                keys = list_keys(session, include_revoked=args.all)
    if args.action == "create":
        print(
            f"created key {args.name!r} with scope {', '.join(args.scope)}; it is shown once, store it now:"
        )
        print(key)
    elif args.action == "revoke":
        print(f"revoked key {args.name!r}: gateways refuse it within 5 s")
    else:
        _print_keys(keys)
    return 0


def _print_keys(keys: list) -> None:
    from rich.console import Console
    from rich.table import Table

    if not keys:
        print("no API keys (mediasearch keys create --name NAME --scope search makes one)")
        return
    table = Table("name", "scopes", "key starts", "rate/s", "burst", "created", "last used", "revoked")

    def when(t: object) -> str:
        return t.strftime("%Y-%m-%d %H:%M:%S") if t is not None else "-"  # type: ignore[attr-defined]

    for k in keys:
        table.add_row(
            k.name,
            ",".join(k.scopes),
            k.prefix + "…",
            "default" if k.rate_rps is None else f"{k.rate_rps:g}",
            "default" if k.burst is None else str(k.burst),
            when(k.created),
            when(k.last_used),
            when(k.revoked),
        )
    Console().print(table)
