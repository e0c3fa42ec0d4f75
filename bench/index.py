"""Vector index benchmark (index v2): one coarse quantizer per index generation, 4 shards that own
its inverted lists, served by 4 ``mediasearch shard-server`` processes over gRPC.

The index is built through the production path: the vectors as exact (generation 0, flat)
segments hash-partitioned into the shards and published, then the :class:`Rebalancer` trains
generation 1 (k-means lists, SQ8 codes, lists packed into the shards by size) and switches to it;
``build_s`` is all of that. The operating point is the smallest ``nprobe`` (lists in the whole
index) whose in-process recall@10 reaches 0.95, each segment re-ranking its top ``k * rerank``
candidates exactly. Then, same vectors and queries, one run:

- in-process, one query at a time, on one thread (``inproc_qps``, like hnswlib's figure): the
  router's plan (quantizer probe, lists routed to their owners), ``Shard.search`` of each called
  shard, merge, in a direct loop that also says where a query's time goes; and through the
  LocalRouter as the embedded gateway runs it (asyncio, shards in worker threads), printed beside;
- served: a GrpcRouter routing by the live generation to the 4 shard servers: p50 at concurrency 1,
  QPS at concurrency 8, recall@10 on every query, lists scanned and shards called per query (the
  router's counters over the timed searches);
- shard imbalance (largest / mean, vectors), RAM bytes per vector (the live segments'
  ``index.faiss``; the memory-mapped ``vectors.npy`` that re-ranking reads is printed beside it);
- baselines on the same queries: numpy brute force (baseline 2), hnswlib M16 with ef raised until
  recall@10 >= 0.95, one thread (baseline 3; its build takes about 6 minutes at 1M), pgvector HNSW
  on a subset when it is installed (printed, not in the summary line).

    make bench-index                                        # n = 1,000,000
    make bench-index ARGS="--n 100000 --hnswlib-n 100000"   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from bench._index_baselines import BaselineResult, hnswlib_baseline, numpy_brute_force, pgvector_baseline
from bench._index_data import DataSpec, Generator, ground_truth, recall_at
from mediasearch.dev.processes import Child, free_ports, mediasearch_command, stop_all
from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.metadata.segment_manifest import live_generation, load_shard_manifest, publish
from mediasearch.settings import Settings
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.follower import GenerationFollower
from mediasearch.vector_index.generation import imbalance
from mediasearch.vector_index.merge import merge_topk
from mediasearch.vector_index.partition import HashPartitioner
from mediasearch.vector_index.rebalance import Rebalancer, RebalanceResult
from mediasearch.vector_index.router import GrpcRouter, LocalRouter, RouteCounters
from mediasearch.vector_index.segment import IDS_FILE, INDEX_FILE, VECTORS_FILE
from mediasearch.vector_index.shard import SearchParams, Shard
from mediasearch.vector_index.store import LocalFolderStore
from mediasearch.vector_index.writer import stage_segment

TARGET = 0.95
K = 10
NPROBES = (4, 6, 8, 10, 12, 16, 24, 32, 48, 64)
DEFAULTS = Settings.defaults()


def say(msg: str) -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class Built:
    url: str
    store: LocalFolderStore
    seconds: float
    rebalance: RebalanceResult


def build(x: np.ndarray, shards: int, work: Path, encoding: str) -> Built:
    """Exact segments per shard (hash-partitioned, published), then generation 1 trained and
    switched to by the Rebalancer, as ``mediasearch compact`` does once the index is large."""
    url = f"sqlite:///{work / 'meta.db'}"
    engine = make_engine(url)
    migrate(engine)
    sessions = session_factory(engine)
    store = LocalFolderStore(work / "store")
    ids = np.arange(len(x), dtype=np.int64)
    owner = HashPartitioner(shards).shards_for(ids)
    config = BuildConfig.defaults(encoding=encoding)  # without a generation, a segment is flat
    started = time.perf_counter()
    for s in range(shards):
        mine = owner == s
        rec = stage_segment(
            store, x[mine], ids[mine], shard=s, model_version="bench", config=config, work_dir=work
        )
        publish(sessions, add=[rec])
        say(f"  shard {s}: {rec.count} vectors, {rec.index_type}, {time.perf_counter() - started:.0f}s")
    rebalancer = Rebalancer(sessions, store, config, shards, work_dir=work)
    result = rebalancer.run("bench", say=lambda m: say(f"  {m}"))
    seconds = time.perf_counter() - started
    engine.dispose()
    return Built(url, store, seconds, result)


def load_shards(sessions: sessionmaker[Session], store: LocalFolderStore, shards: int) -> list[Shard]:
    out = []
    for s in range(shards):
        shard = Shard(s, store, verify_checksums=False)
        with sessions() as session:
            shard.apply(load_shard_manifest(session, s))
        out.append(shard)
    return out


def params_for(nprobe: int, rerank: int) -> SearchParams:
    return SearchParams(k=K, nprobe=nprobe, ef_search=DEFAULTS.search_ef, rerank=rerank)


async def pick_operating_point(
    router: LocalRouter, queries: np.ndarray, truth: np.ndarray, rerank: int
) -> tuple[SearchParams, float]:
    """The smallest nprobe whose recall@10 reaches the target (else the largest tried)."""
    for nprobe in NPROBES:
        params = params_for(nprobe, rerank)
        before = (router.counters.queries, router.counters.shards_called)
        r = recall_at((await router.search(queries, params)).ids, truth)
        called = (router.counters.shards_called - before[1]) / (router.counters.queries - before[0])
        say(f"  nprobe={nprobe:<3} recall@10={r:.4f} shards_called_per_query={called:.2f}")
        if r >= TARGET:
            return params, r
    say(f"  note: no nprobe up to {NPROBES[-1]} reached recall@10 {TARGET}; measuring at {NPROBES[-1]}")
    return params, r


async def router_qps(router: LocalRouter, queries: np.ndarray, params: SearchParams) -> float:
    """One query at a time through the router (its shards in worker threads), as the gateway."""
    for q in queries[:20]:
        await router.search(q[None, :], params)
    started = time.perf_counter()
    for q in queries:
        await router.search(q[None, :], params)
    return len(queries) / (time.perf_counter() - started)


@dataclass(frozen=True)
class Breakdown:
    """Milliseconds per query of the direct loop, and the shard calls it made per query."""

    total: float
    probe: float  # the quantizer search alone (timed in a loop of its own)
    plan: float  # the router's plan: probe + route to owners + counters
    shards: float  # Shard.search of every called shard: scan of its lists + re-rank + its merge
    merge: float
    calls: float

    def line(self, router_ms: float) -> str:
        per_call = self.shards / self.calls if self.calls else 0.0
        return (
            f"breakdown (ms per query, 1 thread): quantizer_probe={self.probe:.3f} "
            f"route={self.plan - self.probe:.3f} shard_scan_rerank={self.shards:.3f} "
            f"({self.calls:.2f} calls, {per_call:.3f} each) merge={self.merge:.3f} "
            f"direct_total={self.total:.3f} router_total={router_ms:.3f} "
            f"router_overhead={router_ms - self.total:.3f}"
        )


def direct_loop(router: LocalRouter, queries: np.ndarray, params: SearchParams) -> tuple[float, Breakdown]:
    """The router's work without asyncio or threads: plan, each called shard in turn, merge."""
    _direct_pass(router, queries[:20], params)  # warm-up
    total, spent, calls = _direct_pass(router, queries, params)
    generation = router.generations() if router.generations is not None else None
    probe = 0.0
    if generation is not None:
        t0 = time.perf_counter()
        for q in queries:
            generation.probe(q[None, :], params.nprobe)
        probe = time.perf_counter() - t0
    ms = 1000 / len(queries)
    plan, shards, merge = spent * ms
    return len(queries) / total, Breakdown(total * ms, probe * ms, plan, shards, merge, calls / len(queries))


def _direct_pass(
    router: LocalRouter, queries: np.ndarray, params: SearchParams
) -> tuple[float, np.ndarray, int]:
    """Seconds in all, seconds in (plan, shard searches, merge), shard calls."""
    spent = np.zeros(3)
    calls = 0
    started = time.perf_counter()
    for q in queries:
        one = q[None, :]
        t0 = time.perf_counter()
        generation, plan = router._plan(one, params)
        t1 = time.perf_counter()
        number = generation.number if generation is not None else 0
        parts = [router.shards[s].search(one, params, lists=ls, generation=number) for s, ls in plan.items()]
        t2 = time.perf_counter()
        merge_topk([p[0] for p in parts], [p[1] for p in parts], params.k)
        spent += (t1 - t0, t2 - t1, time.perf_counter() - t2)
        calls += len(plan)
    return time.perf_counter() - started, spent, calls


@dataclass(frozen=True)
class InProcess:
    params: SearchParams
    recall: float
    router_qps: float
    direct_qps: float
    breakdown: Breakdown
    files: dict[str, int]  # bytes of the live segments' files, by name

    def report(self, n: int, quantizer: int) -> None:
        p = self.params
        say(
            f"in-process, FAISS on 1 thread, nprobe={p.nprobe} rerank={p.rerank}: "
            f"router {self.router_qps:.0f} QPS (shards in worker threads, as the embedded gateway), "
            f"direct loop {self.direct_qps:.0f} QPS"
        )
        say(self.breakdown.line(1000 / self.router_qps))
        ram, disk = self.files[INDEX_FILE] / n, sum(self.files.values()) / n
        say(
            f"bytes per vector: RAM {ram:.0f} (index.faiss); on disk {disk:.0f} = index.faiss {ram:.0f} "
            f"+ vectors.npy {self.files[VECTORS_FILE] / n:.0f} (memory-mapped, re-ranking) "
            f"+ ids.npy {self.files[IDS_FILE] / n:.0f}; quantizer {quantizer / 1e6:.1f} MB "
            f"(in each router and shard server)"
        )


async def in_process(
    shards: list[Shard], follower: GenerationFollower, queries: np.ndarray, truth: np.ndarray, rerank: int
) -> InProcess:
    router = LocalRouter(shards, generations=follower.current, deadline_s=600.0)
    try:
        say("recall vs nprobe (lists in the whole index), in-process:")
        params, recall = await pick_operating_point(router, queries, truth, rerank)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            qps = await router_qps(router, queries, params)
            direct_qps, breakdown = direct_loop(router, queries, params)
        finally:
            faiss.omp_set_num_threads(threads)
    finally:
        await router.close()
    files = {name: 0 for name in (INDEX_FILE, VECTORS_FILE, IDS_FILE)}
    for shard in shards:
        for segment in shard.view.segments:
            for name in files:
                files[name] += (segment.folder / name).stat().st_size
    return InProcess(params, recall, qps, direct_qps, breakdown, files)


def start_servers(
    url: str, store: LocalFolderStore, shards: int, work: Path
) -> tuple[list[Child], list[str]]:
    """One ``mediasearch shard-server`` per shard, on free ports, SERVING; stop with stop_all."""
    ports = free_ports(shards)
    children = []
    try:
        for s, port in enumerate(ports):
            argv = mediasearch_command(
                "shard-server", shard=s, port=port, database_url=url, store_url=store.root.as_uri(),
                workers=8, poll_interval=1,
            )  # fmt: skip
            children.append(Child(f"shard-{s}", argv, log_path=work / f"shard{s}.log").start())
        for child, port in zip(children, ports, strict=True):
            child.wait_serving(port)
    except BaseException:
        stop_all(children)
        raise
    return children, [f"127.0.0.1:{p}" for p in ports]


@dataclass(frozen=True)
class Served:
    c1_ms: np.ndarray  # latencies at concurrency 1
    cn_ms: np.ndarray  # latencies at the benchmark's concurrency
    qps: float  # at the benchmark's concurrency
    recall: float
    counters: RouteCounters  # over the timed searches (both concurrencies)
    rtt_ms: np.ndarray  # a Stats call to one shard server at concurrency 1: the transport's floor


async def served(
    addresses: list[str],
    follower: GenerationFollower,
    queries: np.ndarray,
    truth: np.ndarray,
    params: SearchParams,
    concurrency: int,
    count: int,
) -> Served:
    """Through a GrpcRouter routing by the live generation, as the gateway in cluster mode."""
    router = GrpcRouter([[a] for a in addresses], deadline_s=5.0, generations=follower.current)
    try:
        for q in queries[:50]:  # warm-up: connections, page cache of the memory-mapped vectors
            await router.search(q[None, :], params)
        router.counters = RouteCounters()
        c1, _ = await timed(router, queries, params, 1, min(1000, count))
        cn, qps = await timed(router, queries, params, concurrency, count)
        counters = router.counters
        router.counters = RouteCounters()
        rtt = await round_trips(router, addresses[0], 300)
        found = np.concatenate(
            [(await router.search(queries[i : i + 64], params)).ids for i in range(0, len(queries), 64)]
        )
    finally:
        await router.close()
    return Served(c1, cn, qps, recall_at(found, truth), counters, rtt)


async def round_trips(router: GrpcRouter, address: str, count: int) -> np.ndarray:
    """Milliseconds of ``count`` Stats calls to one shard server, one at a time: what one RPC costs
    on this machine without any search work (the floor under a served search's latency)."""
    from mediasearch._proto.mediasearch.v1 import shard_pb2

    stub: Any = router._stub(address)
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        await stub.Stats(shard_pb2.ShardStatsRequest(), timeout=5.0)
        out.append((time.perf_counter() - t0) * 1000)
    return np.array(out)


async def timed(
    router: GrpcRouter, queries: np.ndarray, params: SearchParams, concurrency: int, count: int
) -> tuple[np.ndarray, float]:
    """Latencies (ms) and QPS of ``count`` single-query searches, ``concurrency`` in flight."""
    latencies: list[float] = []

    async def worker(offset: int) -> None:
        for i in range(offset, count, concurrency):
            t0 = time.perf_counter()
            await router.search(queries[i % len(queries)][None, :], params)
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return np.array(latencies), count / (time.perf_counter() - started)


def quantizer_bytes(sessions: sessionmaker[Session], store: LocalFolderStore) -> int:
    with sessions() as session:
        record = live_generation(session)
    if record is None:
        return 0
    folder = store.open(record.quantizer_uri, verify_checksums=False)
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def ratio(ours: float, theirs: BaselineResult) -> str:
    return f"{ours / theirs.qps:.1f}" if theirs.qps else "n/a"


def baselines(
    x: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> tuple[BaselineResult, BaselineResult, BaselineResult]:
    say("baselines:")
    base_np = numpy_brute_force(x, queries, truth, count=min(30, len(queries)))
    say(f"  numpy brute force: {base_np.qps:.1f} QPS, recall {base_np.recall:.3f} (n={len(x)})")
    hn = min(len(x), args.hnswlib_n or len(x))
    base_hn = hnswlib_baseline(x[:hn], queries, ground_truth(x[:hn], queries, K), TARGET, args.hnswlib_cap_s)
    say(
        f"  hnswlib 1 thread: {base_hn.qps or 0:.0f} QPS, recall {base_hn.recall:.3f}, {base_hn.setting}, "
        f"n={hn}, build {base_hn.build_s:.0f}s {base_hn.note}"
    )
    if hn < len(x):
        say(f"  note: hnswlib ran on the first {hn} vectors; a smaller graph is faster")
    pn = min(len(x), args.pgvector_n)
    pq = queries[:200]
    base_pg = pgvector_baseline(x[:pn], pq, ground_truth(x[:pn], pq, K), TARGET, args.concurrency, 2000)
    if base_pg.qps is None:
        say(f"  pgvector: SKIPPED: {base_pg.note}")
    else:
        say(
            f"  pgvector c{args.concurrency}: {base_pg.qps:.0f} QPS, recall {base_pg.recall:.3f}, "
            f"{base_pg.setting}, n={pn} (a smaller graph is faster), build {base_pg.build_s:.0f}s"
        )
    return base_np, base_hn, base_pg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--served-count", type=int, default=4000, help="searches in the served measurement")
    p.add_argument("--encoding", default="SQ8", help="codes in the lists: SQ8 (default), Flat, SQfp16, PQ<m>")
    p.add_argument("--rerank", type=int, default=DEFAULTS.search_rerank, help="candidates kept per result")
    p.add_argument("--hnswlib-n", type=int, default=0, help="hnswlib subset (0: all n, the same vectors)")
    p.add_argument("--hnswlib-cap-s", type=float, default=3600, help="give hnswlib up to this build time")
    p.add_argument("--pgvector-n", type=int, default=100_000, help="pgvector subset")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-index-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = DataSpec(n=args.n, dim=args.dim)
    say(f"data: n={args.n} dim={args.dim} clusters={spec.n_clusters} queries={args.queries} (shifted)")
    gen = Generator(spec)
    x, queries = gen.vectors(), gen.queries(args.queries)
    truth = ground_truth(x, queries, K)

    say("build: exact segments, then generation 1:")
    built = build(x, args.shards, work, args.encoding)
    sessions = session_factory(make_engine(built.url))
    follower = GenerationFollower(sessions, built.store, verify_checksums=False)
    follower.sync_once()
    generation = follower.current()
    if generation is None:
        raise SystemExit("no live index generation after the rebalance")
    shard_sizes = generation.shard_sizes()
    skew = imbalance(shard_sizes)
    say(f"  generation {generation.number}: {generation.factory}, vectors per shard {shard_sizes.tolist()}")

    shards = load_shards(sessions, built.store, args.shards)
    ours = asyncio.run(in_process(shards, follower, queries, truth, args.rerank))
    del shards
    ours.report(args.n, quantizer_bytes(sessions, built.store))
    params = ours.params

    children, addresses = start_servers(built.url, built.store, args.shards, work)
    try:
        srv = asyncio.run(
            served(addresses, follower, queries, truth, params, args.concurrency, args.served_count)
        )
    finally:
        stop_all(children, timeout_s=30)
    c1_p50 = float(np.percentile(srv.c1_ms, 50))
    lists_per_query = srv.counters.lists_scanned / max(srv.counters.queries, 1)
    shards_per_query = srv.counters.shards_called / max(srv.counters.queries, 1)
    say(
        f"served ({args.shards} shard servers): c1 p50 {c1_p50:.2f} ms "
        f"p99 {np.percentile(srv.c1_ms, 99):.2f} ms; "
        f"c{args.concurrency} p50 {np.percentile(srv.cn_ms, 50):.2f} ms p99 "
        f"{np.percentile(srv.cn_ms, 99):.2f} ms, {srv.qps:.0f} QPS; recall@10 {srv.recall:.4f}"
    )
    say(
        f"served c1 breakdown (ms): p50 {c1_p50:.2f} = in-process work {ours.breakdown.total:.2f} "
        f"+ {shards_per_query:.2f} shard RPCs in parallel (one Stats round trip alone: p50 "
        f"{np.percentile(srv.rtt_ms, 50):.2f}, p99 {np.percentile(srv.rtt_ms, 99):.2f}) + the rest "
        f"{c1_p50 - ours.breakdown.total - np.percentile(srv.rtt_ms, 50):.2f} (asyncio, serialisation, "
        f"the other calls' wake-ups on {os.cpu_count()} cores)"
    )

    base_np, base_hn, base_pg = baselines(x, queries, truth, args)
    if base_pg.qps:
        say(f"  served c{args.concurrency} vs pgvector: {ratio(srv.qps, base_pg)}")
    shutil.rmtree(work, ignore_errors=True)
    hnswlib_qps = f"{base_hn.qps:.0f}" if base_hn.qps else "n/a"
    say(
        f"index: n={args.n} shards={args.shards} nlist={generation.nlist} nprobe={params.nprobe} "
        f"recall@10={srv.recall:.4f} lists_scanned_per_query={lists_per_query:.2f} "
        f"shards_called_per_query={shards_per_query:.2f} served_c1_p50_ms={c1_p50:.2f} "
        f"served_qps_c{args.concurrency}={srv.qps:.0f} inproc_qps={ours.direct_qps:.0f} "
        f"hnswlib_qps={hnswlib_qps} vs_hnswlib={ratio(ours.direct_qps, base_hn)} "
        f"vs_numpy={ratio(ours.direct_qps, base_np)} imbalance={skew:.3f} "
        f"bytes_per_vec={ours.files[INDEX_FILE] / args.n:.0f} build_s={built.seconds:.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
