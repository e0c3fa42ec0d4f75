"""Chaos on the ``make up`` cluster: faults under steady ingestion and searches, then an audit.

    python -m bench.chaos                       (make chaos CHAOS="--faults indexer-kill,rolling-restart")

The cluster runs as a deployment would: two shard servers per shard, two gateways, one Triton, the
indexer and the compactor, PostgreSQL of the run's own (``initdb`` in a temporary folder, its own
port: restarting it touches nothing else) and moto for S3 + SQS. Images are PUT, overwritten and
deleted at a steady rate (every body a different image) while callers search through both gateways.
The faults, one after the other with ``--gap-s`` of steady load before each, and how recovery and
``failed`` are defined: :mod:`mediasearch.dev.chaos`. Prints a progress line every 10 s, a line
per fault with its recovery time, then the summary:

    chaos: images=… deleted=… lost=0 duplicated=0 resurrected=0 searches=… failed=… partial=… recovery_max_s=…

``images``: keys whose last operation was a PUT (each must be findable exactly once, in its last
version), ``deleted``: keys whose last operation was a delete (each must be gone), ``failed``: search
errors other than UNAVAILABLE during a declared outage. Logs stay in ``--workdir``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mediasearch.dev.chaos import FAULTS, FULL, Chaos, ChaosPlan
from mediasearch.dev.workload import load_cluster


def say(line: str) -> None:
    print(line, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--repository", type=Path, default=Path("model_repository"), help="exported model repository"
    )
    p.add_argument("--workdir", type=Path, help="logs and segments (default: build/chaos/<time>)")
    p.add_argument(
        "--faults",
        default=",".join(FULL),
        help=f"comma-separated, in order (default: the full schedule); known: {', '.join(FAULTS)}",
    )
    plan = ChaosPlan()
    p.add_argument(
        "--gap-s", type=float, default=plan.gap_s, help="steady load before each fault and after the last"
    )
    p.add_argument("--ingest-rate", type=float, default=plan.ingest_rate, help="S3 PUTs and deletes a second")
    p.add_argument("--callers", type=int, default=plan.callers, help="search callers (closed loops)")
    p.add_argument(
        "--pg-down-s", type=float, default=plan.pg_down_s, help="PostgreSQL's time down in its restart"
    )
    p.add_argument("--emulator-down-s", type=float, default=plan.emulator_down_s, help="the emulator outage")
    p.add_argument(
        "--recovery-timeout-s",
        type=float,
        default=plan.recovery_timeout_s,
        help="a fault not recovered by then is reported hung",
    )
    p.add_argument(
        "--settle-timeout-s",
        type=float,
        default=plan.settle_timeout_s,
        help="the final wait for the index to match",
    )
    args = p.parse_args()
    plan = ChaosPlan(
        faults=tuple(f for f in args.faults.split(",") if f),
        gap_s=args.gap_s,
        ingest_rate=args.ingest_rate,
        callers=args.callers,
        pg_down_s=args.pg_down_s,
        emulator_down_s=args.emulator_down_s,
        recovery_timeout_s=args.recovery_timeout_s,
        settle_timeout_s=args.settle_timeout_s,
    )
    workdir = args.workdir or Path("build/chaos") / time.strftime("%Y%m%d-%H%M%S")
    say(f"chaos: faults {', '.join(plan.faults)}; logs in {workdir}/")
    with load_cluster(args.repository, workdir) as load:
        say(f"cluster up: gateways {load.addresses}, shards {load.info['shards']}")
        report = Chaos(load, plan, say).run()
    for line in report.lines:
        say(line)
    say(report.summary())
    return 0 if report.audit.clean and not report.failed and not report.hung else 1


if __name__ == "__main__":
    raise SystemExit(main())
