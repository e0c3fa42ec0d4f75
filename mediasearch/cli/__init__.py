"""The ``mediasearch`` command line: one subcommand per module in this package.

The composition root: each subcommand module defines ``register(subparsers)``, which adds its
parser and sets ``func(args, settings) -> int`` as the handler; a handler parses nothing more and
calls one function of the part it runs. Settings are read once, here, from ``MEDIASEARCH_*``; a
command-line option is applied on top (:meth:`Settings.with_overrides`). Heavy imports happen inside
the handlers, so ``mediasearch --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mediasearch.errors import MediaSearchError
from mediasearch.settings import load_settings

_COMMANDS = (
    "export", "scenes", "triton", "shard-server", "compact", "index", "backfill", "indexer",
    "serve", "query", "up", "demo", "migrate", "pull-model", "keys", "generation", "reindex",
)  # fmt: skip

# Libraries that log their internals at INFO: faiss's loader prints a "Could not load library ...
# ModuleNotFoundError" line for every SIMD variant it probes before loading the dynamic-dispatch
# build, which reads like a failure; alembic lists its plugins at every start. -v shows them.
_CHATTY = ("faiss.loader", "alembic.runtime.plugins", "alembic.runtime.migration")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediasearch",
        description="Text-to-image search: export CLIP, serve encoders, index images, search them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (MEDIASEARCH_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import importlib

    for name in _COMMANDS:
        importlib.import_module(f"mediasearch.cli.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if not args.verbose and settings.log_level != "DEBUG":
            for name in _CHATTY:
                logging.getLogger(name).setLevel(logging.WARNING)
        return int(args.func(args, settings) or 0)
    except MediaSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
