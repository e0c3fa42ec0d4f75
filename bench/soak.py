"""Soak: 64 callers mixing valid and invalid searches plus steady ingestion for SOAK_S seconds.

    python -m bench.soak --seconds 600          (make soak SOAK_S=600)

On the same cluster as ``make chaos`` (two shard servers per shard, two gateways; PostgreSQL of the
run's own), with no faults: every answer must carry the code a correct service gives (OK, or
INVALID_ARGUMENT for the deliberately invalid requests), latency must not drift (p99 of the valid
searches in the first and in the last minute) and no service may grow (RSS of each service's
process tree, its last minute's mean minus its second minute's; runs under three minutes use thirds
of the run). What each figure means: :mod:`mediasearch.dev.soak`. Prints a progress line every
10 s, one line per service's RSS, then the summary:

    soak: seconds=… searches=… unexpected_codes=0 p99_first_min_ms=… p99_last_min_ms=… rss_growth_mb=…
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mediasearch.dev.soak import SoakPlan, run_soak
from mediasearch.dev.workload import load_cluster


def say(line: str) -> None:
    print(line, flush=True)


def main() -> int:
    plan = SoakPlan()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--repository", type=Path, default=Path("model_repository"), help="exported model repository"
    )
    p.add_argument("--workdir", type=Path, help="logs and segments (default: build/soak/<time>)")
    p.add_argument("--seconds", type=float, default=plan.seconds, help="how long the load runs")
    p.add_argument("--callers", type=int, default=plan.callers, help="search callers (closed loops)")
    p.add_argument(
        "--invalid-share", type=float, default=plan.invalid_share, help="share of invalid requests"
    )
    p.add_argument("--ingest-rate", type=float, default=plan.ingest_rate, help="S3 PUTs and deletes a second")
    args = p.parse_args()
    plan = SoakPlan(
        seconds=args.seconds,
        callers=args.callers,
        invalid_share=args.invalid_share,
        ingest_rate=args.ingest_rate,
    )
    workdir = args.workdir or Path("build/soak") / time.strftime("%Y%m%d-%H%M%S")
    say(f"soak: {plan.callers} callers for {plan.seconds:.0f}s; logs in {workdir}/")
    with load_cluster(args.repository, workdir) as load:
        say(f"cluster up: gateways {load.addresses}, shards {load.info['shards']}")
        report = run_soak(load, plan, say)
    for line in report.lines:
        say(line)
    say(report.summary())
    return 0 if not report.unexpected and report.audit.clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
