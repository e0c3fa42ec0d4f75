"""``make soak``: many callers and steady ingestion for a long while; latency and memory must not drift.

On :func:`~mediasearch.dev.workload.load_cluster`, for ``seconds``: ``callers`` closed-loop callers
(64 by default) search through both gateways, a share of them with requests the gateway must refuse
(empty text, text over the length limit, top_k over the limit, a forged page token: each must get
INVALID_ARGUMENT), while an :class:`~mediasearch.dev.workload.Ingestion` PUTs and deletes images.
Every answer is checked against the code a correct service gives (OK for a valid search), and the
resident memory of every service's process tree (Triton with its backend stubs) is sampled.

Windows are minutes (shorter runs: a third of the run each): ``p99_first_min_ms`` and
``p99_last_min_ms`` are the 99th percentile latency of the valid searches that started in the first
and in the last window; a service's RSS growth is its mean RSS over the last window minus its mean
over the second (the first is warm-up: caches, pools and allocator arenas fill). The summary's
``rss_growth_mb`` is the largest growth of any service. At the end the index is audited as in a
chaos run (nothing lost, duplicated or resurrected under steady load). Summary:
``soak: seconds=… searches=… unexpected_codes=0 p99_first_min_ms=… p99_last_min_ms=… rss_growth_mb=…``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mediasearch.dev import index_audit
from mediasearch.dev.workload import Ingestion, LoadCluster, Outcome, Progress, SearchLoad, p99_ms

_PAGE = 4096


@dataclass(frozen=True)
class SoakPlan:
    seconds: float = 600.0
    callers: int = 64
    invalid_share: float = 0.2
    ingest_rate: float = 1.0
    sample_s: float = 2.0
    settle_timeout_s: float = 120.0
    progress_s: float = 10.0
    seed: int = 1

    @property
    def window_s(self) -> float:
        return min(60.0, self.seconds / 3)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MiB (0 when it is gone)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += int((Path("/proc") / str(current) / "statm").read_text().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            continue
        todo += children.get(current, [])
    return total / (1 << 20)


class RssSampler:
    """Samples every service's tree RSS every ``every_s`` in a thread: (time, {service: MiB})."""

    def __init__(self, pids: Callable[[], dict[str, int]], every_s: float) -> None:
        self.pids, self.every_s = pids, every_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            self.samples.append((now, {name: tree_rss_mb(pid) for name, pid in self.pids().items()}))
            if self._stop.wait(self.every_s):
                return

    def mean(self, service: str, start: float, end: float) -> float:
        values = [s[service] for t, s in self.samples if start <= t < end and service in s]
        return float(np.mean(values)) if values else 0.0


@dataclass
class SoakReport:
    plan: SoakPlan
    outcomes: list[Outcome]
    unexpected: collections.Counter[str]
    p99_first_ms: float
    p99_last_ms: float
    rss_growth_mb: dict[str, float]
    audit: index_audit.AuditResult
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        growth = max(self.rss_growth_mb.values(), default=0.0)
        return (
            f"soak: seconds={self.plan.seconds:.0f} searches={len(self.outcomes)} "
            f"unexpected_codes={sum(self.unexpected.values())} p99_first_min_ms={self.p99_first_ms:.0f} "
            f"p99_last_min_ms={self.p99_last_ms:.0f} rss_growth_mb={growth:.1f}"
        )


def run_soak(load: LoadCluster, plan: SoakPlan, say: Callable[[str], None]) -> SoakReport:
    """The soak run on a running cluster (see the module doc); ``say`` gets the progress lines."""
    ingestion = Ingestion(load.bucket, prefix="soak/", rate=plan.ingest_rate, seed=plan.seed)
    searches = SearchLoad(load.addresses, plan.callers, invalid_share=plan.invalid_share, seed=plan.seed)
    started = time.monotonic()

    def progress() -> str:
        outcomes = list(searches.outcomes)
        bad = sum(o.code != o.expected for o in outcomes)
        recent = [
            o for o in outcomes if o.expected == "OK" and o.code == "OK" and o.started > time.monotonic() - 10
        ]
        return (
            f"soak: {time.monotonic() - started:.0f}/{plan.seconds:.0f}s · searches {len(outcomes)} "
            f"unexpected {bad} · p99 last 10s {p99_ms(recent):.0f} ms · "
            f"live images {len(ingestion.ledger.live())}"
        )

    services = lambda: {k: v for k, v in load.cluster.pids().items() if k != "moto"}  # noqa: E731
    with RssSampler(services, plan.sample_s) as rss, Progress(say, progress, plan.progress_s):
        ingestion.start()
        searches.start()
        time.sleep(plan.seconds)
        end = time.monotonic()
        searches.stop()
        ingestion.stop()
    outcomes = [o for o in searches.outcomes if o.started < end]
    w = plan.window_s
    valid = [o for o in outcomes if o.expected == "OK" and o.code == "OK"]
    first = [o for o in valid if o.started < started + w]
    last = [o for o in valid if o.started >= end - w]
    unexpected = collections.Counter(f"{o.expected}->{o.code}" for o in outcomes if o.code != o.expected)
    growth = {
        name: rss.mean(name, end - w, end) - rss.mean(name, started + w, started + 2 * w)
        for name in services()
    }
    result, settle_s = index_audit.settle(load, ingestion.ledger, plan.settle_timeout_s)
    report = SoakReport(plan, outcomes, unexpected, p99_ms(first), p99_ms(last), growth, result)
    codes = collections.Counter(f"{o.expected}->{o.code}" for o in outcomes)
    partial = sum(o.partial for o in outcomes)
    report.lines = [
        f"rss {name}: {rss.mean(name, started + w, started + 2 * w):.0f} MiB in the second window, "
        f"{rss.mean(name, end - w, end):.0f} MiB in the last ({mb:+.1f})"
        for name, mb in sorted(growth.items())
    ]
    report.lines += [
        f"answers (expected->got): {dict(codes)}; partial {partial}; windows of {w:.0f}s",
        f"throughput {len(outcomes) / plan.seconds:.1f} searches/s; p99 first {report.p99_first_ms:.0f} ms, "
        f"last {report.p99_last_ms:.0f} ms",
        f"ingestion: {ingestion.ledger.puts} new keys, {ingestion.ledger.deletes} deletes; settled in "
        f"{settle_s:.1f}s; audit: {result.describe()}",
    ]
    return report
