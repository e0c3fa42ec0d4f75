"""``make chaos``: faults injected into the running cluster under steady ingestion and searches.

On :func:`~mediasearch.dev.workload.load_cluster` (two shard servers per shard, two gateways, one
Triton, PostgreSQL of the run's own) an :class:`~mediasearch.dev.workload.Ingestion` PUTs and
deletes images and a :class:`~mediasearch.dev.workload.SearchLoad` searches through both gateways
(round robin over those that report SERVING, UNAVAILABLE retried: what a client behind a
Kubernetes Service sees). After a quiet ``gap_s`` each fault of the plan is injected in turn:

=====================  ===================================================================
``indexer-kill``       SIGKILL of the indexer (its messages come back after the visibility)
``shard-kill``         SIGKILL of one shard server replica (the router asks the other)
``triton-kill``        SIGKILL of Triton (searches: UNAVAILABLE until it is back)
``compactor-kill``     SIGKILL of the compactor as soon as its log shows a merge under way
``gateway-kill``       SIGKILL of one gateway (calls in flight on it are retried elsewhere)
``postgres-restart``   PostgreSQL stopped (fast shutdown), ``pg_down_s`` later started again
``emulator-outage``    moto (S3 + SQS) stopped with SIGSTOP for ``emulator_down_s``, then SIGCONT:
                       an outage that keeps the objects and messages, as S3 and SQS do
``rolling-restart``    every service in turn: SIGTERM, the supervisor starts it again, the next
                       one once it reports SERVING and ``min_ready_s`` passed (a Deployment's
                       rollout with maxUnavailable 1): gateways, shard servers, Triton, indexer,
                       compactor
=====================  ===================================================================

After a fault the cluster is *whole again* when every process runs and its servers report SERVING,
a search through each gateway is answered in full, and an image PUT right after the fault is
served by every replica of its shard; the fault's recovery time is from the end of the fault (the
kill; PostgreSQL or the emulator back) to then. Each fault is a declared outage from its injection
to its recovery, in which UNAVAILABLE answers are expected; the rolling restart declares none
except for Triton's turn (this cluster runs one Triton: its restart is an outage of the encoder).
``failed`` counts every other error, and UNAVAILABLE outside those windows.

At the end the load stops and :func:`~mediasearch.dev.index_audit.settle` waits until the queue is
empty and the index holds exactly the ledger's keys (or ``settle_timeout_s``), then the summary:
``chaos: images=… deleted=… lost=0 duplicated=0 resurrected=0 searches=… failed=… partial=…
recovery_max_s=…``.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mediasearch.dev import index_audit
from mediasearch.dev.cluster import gateway_name, shard_name
from mediasearch.dev.postgres import available as postgres_available
from mediasearch.dev.processes import grpc_serving, http_status
from mediasearch.dev.workload import Ingestion, LoadCluster, Outcome, Progress, SearchLoad

FULL = (
    "indexer-kill", "shard-kill", "triton-kill", "indexer-kill", "compactor-kill", "gateway-kill",
    "postgres-restart", "emulator-outage", "indexer-kill", "rolling-restart",
)  # fmt: skip
SHORT = ("indexer-kill", "shard-kill", "postgres-restart", "rolling-restart")
PROBE = "a red circle"


@dataclass(frozen=True)
class ChaosPlan:
    faults: Sequence[str] = FULL
    gap_s: float = 15.0  # steady load before each fault and after the last
    ingest_rate: float = 2.0  # S3 operations a second
    callers: int = 4
    caller_pause_s: float = 0.05
    pg_down_s: float = 5.0
    emulator_down_s: float = 10.0
    min_ready_s: float = 3.0  # a rolling restart's pause once a service serves again
    key_quiet_s: float = 30.0  # a key is touched again only this long after its last operation
    recovery_timeout_s: float = 180.0
    settle_timeout_s: float = 180.0
    progress_s: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [f for f in self.faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")


@dataclass
class Step:
    """One fault (or one service's turn in a rolling restart) and how the cluster took it."""

    name: str
    target: str
    injected: float  # monotonic
    ended: float  # when the fault itself was over (a kill: at once; an outage: its end)
    outage: bool  # UNAVAILABLE expected from injected to recovered
    detail: str = ""
    recovered: float | None = None  # whole again (None: not within the timeout)
    searches: int = 0
    unavailable: int = 0
    failed: int = 0
    partial: int = 0

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered is None else self.recovered - self.ended

    def line(self) -> str:
        took = "NOT whole again (hung)" if self.recovery_s is None else f"recovered in {self.recovery_s:.1f}s"
        down = f" after {self.ended - self.injected:.1f}s down" if self.ended > self.injected + 0.05 else ""
        if self.target == "every service":
            down = ""
        extra = f" ({self.detail})" if self.detail else ""
        return (
            f"fault {self.name} [{self.target}]{extra}: {took}{down}; searches={self.searches} "
            f"unavailable={self.unavailable} failed={self.failed} partial={self.partial}"
        )


@dataclass
class ChaosReport:
    steps: list[Step]
    audit: index_audit.AuditResult
    outcomes: list[Outcome]
    failed: int
    partial: int
    lines: list[str] = field(default_factory=list)

    @property
    def recovery_max_s(self) -> float:
        times = [s.recovery_s for s in self.steps]
        return max((t if t is not None else float("inf") for t in times), default=0.0)

    @property
    def hung(self) -> list[Step]:
        return [s for s in self.steps if s.recovered is None]

    def summary(self) -> str:
        a = self.audit
        return (
            f"chaos: images={a.images} deleted={a.deleted} lost={len(a.lost)} "
            f"duplicated={len(a.duplicated)} resurrected={len(a.resurrected)} "
            f"searches={len(self.outcomes)} failed={self.failed} partial={self.partial} "
            f"recovery_max_s={self.recovery_max_s:.1f}"
        )


class Chaos:
    """Runs a :class:`ChaosPlan` on a running cluster; ``say`` gets the progress and report lines."""

    def __init__(self, load: LoadCluster, plan: ChaosPlan, say: Callable[[str], None]) -> None:
        self.load, self.plan, self.say = load, plan, say
        self.cluster = load.cluster
        self.steps: list[Step] = []
        self.current = "warm-up"
        self.ingestion = Ingestion(
            load.bucket, prefix="chaos/", rate=plan.ingest_rate, key_quiet_s=plan.key_quiet_s, seed=plan.seed
        )
        self.searches = SearchLoad(
            load.addresses, plan.callers, pause_s=plan.caller_pause_s, retries=3, seed=plan.seed
        )
        self._canaries = 0

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> ChaosReport:
        started = time.monotonic()
        self.ingestion.start()
        warm_up = Step("warm-up", "cluster", started, started, outage=True)
        self._wait_whole(warm_up)
        if warm_up.recovered is None:
            raise RuntimeError(
                f"the cluster did not index a first image within {self.plan.recovery_timeout_s:g}s"
            )
        self.say(f"warm-up: an image PUT -> findable on every replica in {warm_up.recovered - started:.1f}s")
        self.searches.start()
        with Progress(self.say, self._progress, self.plan.progress_s):
            for i, fault in enumerate(self.plan.faults, 1):
                self.current = f"{i}/{len(self.plan.faults)} {fault}"
                time.sleep(self.plan.gap_s)
                FAULTS[fault](self)
            self.current = "quiet"
            time.sleep(self.plan.gap_s)
            self.ingestion.stop()
            self.searches.stop()
            self.current = "settling"
            answers = lambda: index_audit.gateway_keys(self.load.addresses, [PROBE, "two blue squares"])  # noqa: E731
            result, settle_s = index_audit.settle(
                self.load, self.ingestion.ledger, self.plan.settle_timeout_s, gateway_answers=answers
            )
        report = self._report(result)
        ledger = self.ingestion.ledger
        report.lines += [
            f"ingestion: new keys {ledger.puts}, overwrites {ledger.overwrites}, re-PUTs of deleted keys "
            f"{ledger.reputs}, deletes {ledger.deletes}; S3 calls retried {ledger.retries}",
            f"settled {settle_s:.1f}s after the load stopped; dead letters "
            f"{self.load.bucket.messages(self.load.bucket.dlq_url)}; audit: {result.describe()}",
            f"whole run {time.monotonic() - started:.0f}s",
        ]
        return report

    def _progress(self) -> str:
        outcomes = list(self.searches.outcomes)
        errors = sum(o.code != "OK" for o in outcomes)
        ledger = self.ingestion.ledger
        return (
            f"chaos: step {self.current} · live {len(ledger.live())} deleted {len(ledger.gone())} · "
            f"searches {len(outcomes)} errors {errors} partial {sum(o.partial for o in outcomes)}"
        )

    def _failed(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Errors other than UNAVAILABLE within a declared outage (from injection to recovery)."""
        windows = [(s.injected, s.recovered or float("inf")) for s in self.steps if s.outage]
        return [
            o for o in outcomes
            if o.code != "OK" and not (o.code == "UNAVAILABLE" and any(_overlaps(o, *w) for w in windows))
        ]  # fmt: skip

    def _tally(self, step: Step, outcomes: Sequence[Outcome], failed: Sequence[Outcome]) -> None:
        end = step.recovered or float("inf")
        during = [o for o in outcomes if _overlaps(o, step.injected, end)]
        step.searches = len(during)
        step.unavailable = sum(o.code == "UNAVAILABLE" for o in during)
        step.failed = sum(_overlaps(o, step.injected, end) for o in failed)
        step.partial = sum(o.partial for o in during)

    def _report(self, result: index_audit.AuditResult) -> ChaosReport:
        outcomes = list(self.searches.outcomes)
        failed = self._failed(outcomes)
        for step in self.steps:
            self._tally(step, outcomes, failed)
        report = ChaosReport(self.steps, result, outcomes, len(failed), sum(o.partial for o in outcomes))
        report.lines = [s.line() for s in self.steps]
        codes = collections.Counter(o.code for o in outcomes)
        report.lines.append(f"search answers by code: {dict(codes)}")
        return report

    # -- recovery --------------------------------------------------------------------------------
    def _record(self, step: Step) -> Step:
        self.steps.append(step)
        self._wait_whole(step)
        outcomes = list(self.searches.outcomes)
        self._tally(step, outcomes, self._failed(outcomes))
        self.say(step.line())
        return step

    def _wait_whole(self, step: Step) -> None:
        """Until the cluster is whole again (see the module doc), with an image PUT now as proof."""
        self._canaries += 1
        key, etag = self.ingestion.put(f"canary/{self._canaries:03d}-{step.name.replace(' ', '-')}.jpg")
        deadline = step.ended + self.plan.recovery_timeout_s
        while time.monotonic() < deadline:
            if etag is not None and self._whole(key, etag):
                step.recovered = time.monotonic()
                return
            time.sleep(0.25)

    def _whole(self, key: str, etag: str) -> bool:
        c = self.cluster
        if not all(child.running() for child in c.children.values()):
            return False
        if c.triton is None or not c.triton.running():
            return False
        if not all(grpc_serving(f"127.0.0.1:{port}") for port in c.ports.values()):
            return False
        if not postgres_available(self.load.postgres.admin_url) or not self._searchable():
            return False
        try:
            return index_audit.findable_everywhere(self.load, key, etag)
        except Exception:  # the database or a replica not there yet
            return False

    def _searchable(self) -> bool:
        """Whether every gateway answers a search in full."""
        from mediasearch.client import SearchClient

        for address in self.load.info["gateways"]:
            try:
                with SearchClient(address, timeout_s=5) as client:
                    if client.search_text(PROBE).partial:
                        return False
            except Exception:  # not answering yet
                return False
        return True

    # -- faults ----------------------------------------------------------------------------------
    def kill(self, fault: str, target: str, detail: str = "") -> Step:
        now = time.monotonic()
        self.cluster.send_signal(target, signal.SIGKILL)
        return self._record(Step(fault, target, now, now, outage=True, detail=detail or "SIGKILL"))

    def _numbered(self, fault: str) -> str:
        return f"{fault}#{sum(s.name.split('#')[0] == fault for s in self.steps) + 1}"

    def indexer_kill(self) -> None:
        self.kill(self._numbered("indexer-kill"), "indexer")

    def shard_kill(self) -> None:
        count = sum(s.name.startswith("shard-kill") for s in self.steps)
        shard = count % self.cluster.options.num_shards
        self.kill(self._numbered("shard-kill"), shard_name(shard, self.cluster.options.replicas - 1))

    def triton_kill(self) -> None:
        self.kill(self._numbered("triton-kill"), "triton")

    def gateway_kill(self) -> None:
        self.kill(self._numbered("gateway-kill"), gateway_name(0))

    def compactor_kill(self) -> None:
        """SIGKILL as soon as the compactor's log shows a merge under way (its inputs loaded, the
        merged segment being built; within a minute)."""
        log_path = self.cluster.children["compactor"].log_path
        assert log_path is not None
        start = offset = log_path.stat().st_size
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with log_path.open(errors="replace") as f:
                f.seek(offset)
                new = f.read()
                offset = f.tell()
            if "stage=loaded" in new:
                break
            time.sleep(0.005)
        now = time.monotonic()
        self.cluster.send_signal("compactor", signal.SIGKILL)
        time.sleep(0.2)
        with log_path.open(errors="replace") as f:
            f.seek(start)
            logged = f.read().rsplit("stage=start", 1)
        stages = ["start"] + [
            line.split("stage=")[1].split()[0] for line in logged[-1].splitlines() if "stage=" in line
        ]
        if "loaded" not in stages:
            detail = "SIGKILL; no merge under way within 60s"
        elif stages[-1] in ("published", "done"):
            detail = f"SIGKILL after the merge published (stages {', '.join(stages)})"
        else:
            detail = f"SIGKILL mid-merge, after stage={stages[-1]}"
        step = Step(self._numbered("compactor-kill"), "compactor", now, now, outage=True, detail=detail)
        self._record(step)

    def postgres_restart(self) -> None:
        pg = self.load.postgres
        now = time.monotonic()
        pg.stop()
        time.sleep(self.plan.pg_down_s)
        pg.start()
        step = Step(self._numbered("postgres-restart"), "postgres", now, time.monotonic(), outage=True,
                    detail=f"fast shutdown, started {self.plan.pg_down_s:g}s later")  # fmt: skip
        self._record(step)

    def emulator_outage(self) -> None:
        pid = self.cluster.children["moto"].pid
        assert pid is not None
        now = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(self.plan.emulator_down_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        endpoint = self.load.info["s3_endpoint"]
        answered = http_status(f"{endpoint}/moto-api/") is not None
        detail = f"SIGSTOP for {self.plan.emulator_down_s:g}s; answering after SIGCONT: {answered}"
        back = time.monotonic()
        step = Step(self._numbered("emulator-outage"), "moto", now, back, outage=True, detail=detail)
        self._record(step)

    def rolling_restart(self) -> None:
        """Every service in turn (see the module doc); one step per service, then one for the whole."""
        c = self.cluster
        names = [n for n in c.ports if n.startswith("gateway")] + [
            n for n in c.ports if n.startswith("shard")
        ]
        names += ["triton"] + [n for n in ("indexer", "compactor") if n in c.children]
        started = time.monotonic()
        for name in names:
            before = self._pid(name)
            now = time.monotonic()
            c.send_signal(name, signal.SIGTERM)
            step = Step(f"rolling-restart {name}", name, now, now, outage=name == "triton", detail="SIGTERM")
            self.steps.append(step)
            deadline = now + self.plan.recovery_timeout_s
            while time.monotonic() < deadline and self._pid(name) in (None, before):
                time.sleep(0.05)
            try:
                c.wait_ready(name, timeout_s=max(1.0, deadline - time.monotonic()))
                while time.monotonic() < deadline and not self._searchable():
                    time.sleep(0.1)
                if time.monotonic() < deadline:
                    step.recovered = time.monotonic()
            except Exception as exc:  # not back: the step is reported hung
                step.detail += f"; not back: {exc}"
            outcomes = list(self.searches.outcomes)
            self._tally(step, outcomes, self._failed(outcomes))
            self.say(step.line())
            time.sleep(self.plan.min_ready_s)
        end = time.monotonic()
        self._record(Step(self._numbered("rolling-restart"), "every service", started, end, outage=False,
                          detail=f"{len(names)} services one at a time in {end - started:.0f}s"))  # fmt: skip

    def _pid(self, name: str) -> int | None:
        if name == "triton":
            return self.cluster.triton.pid if self.cluster.triton is not None else None
        return self.cluster.children[name].pid


def _overlaps(o: Outcome, start: float, end: float) -> bool:
    return o.started <= end and o.ended >= start


FAULTS: dict[str, Callable[[Chaos], None]] = {
    "indexer-kill": Chaos.indexer_kill,
    "shard-kill": Chaos.shard_kill,
    "triton-kill": Chaos.triton_kill,
    "compactor-kill": Chaos.compactor_kill,
    "gateway-kill": Chaos.gateway_kill,
    "postgres-restart": Chaos.postgres_restart,
    "emulator-outage": Chaos.emulator_outage,
    "rolling-restart": Chaos.rolling_restart,
}
