"""Vector index benchmark: sharded IVF-HNSW segments served by 4 shard-server processes over gRPC.

Same run, same vectors and queries: our index (recall@10 vs exact, served latency/QPS at
concurrency 8 through the router, in-process single-thread QPS, RAM bytes per vector, build time)
against numpy brute force (baseline 2), hnswlib (baseline 3) and pgvector HNSW, each at matched
recall@10 >= 0.95. hnswlib builds on the full n (about 20 minutes at 1M on 2 cores); pgvector runs
on a subset when it is installed (said in the output; a smaller graph only flatters it).

    make bench-index                       # n = 1,000,000
    make bench-index ARGS="--n 100000"     # quick
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from bench._index_baselines import BaselineResult, hnswlib_baseline, numpy_brute_force, pgvector_baseline
from bench._index_data import DataSpec, Generator, ground_truth, recall_at
from mediasearch.dev.processes import Child, free_ports, mediasearch_command, stop_all
from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.metadata.segment_manifest import load_shard_manifest, publish
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.merge import merge_topk
from mediasearch.vector_index.partition import HashPartitioner
from mediasearch.vector_index.router import GrpcRouter
from mediasearch.vector_index.shard import SearchParams, Shard
from mediasearch.vector_index.store import LocalFolderStore
from mediasearch.vector_index.writer import stage_segment

TARGET = 0.95
K = 10


def say(msg: str) -> None:
    print(msg, flush=True)


def build(x: np.ndarray, shards: int, work: Path, encoding: str) -> tuple[float, str]:
    """Hash-partition, build one trained segment per shard, publish; returns (seconds, db url)."""
    url = f"sqlite:///{work / 'meta.db'}"
    engine = make_engine(url)
    migrate(engine)
    sessions = session_factory(engine)
    store = LocalFolderStore(work / "store")
    ids = np.arange(len(x), dtype=np.int64)
    owner = HashPartitioner(shards).shards_for(ids)
    started = time.perf_counter()
    for s in range(shards):
        mine = owner == s
        config = BuildConfig.defaults(encoding=encoding)
        rec = stage_segment(
            store, x[mine], ids[mine], shard=s, model_version="bench", config=config, work_dir=work
        )
        publish(sessions, add=[rec])
        say(f"  shard {s}: {rec.count} vectors, {rec.index_type}, {time.perf_counter() - started:.0f}s")
    build_s = time.perf_counter() - started
    engine.dispose()
    return build_s, url


def load_shards(url: str, work: Path, shards: int) -> list[Shard]:
    sessions = session_factory(make_engine(url))
    out = []
    for s in range(shards):
        shard = Shard(s, LocalFolderStore(work / "store"), verify_checksums=False)
        with sessions() as session:
            shard.apply(load_shard_manifest(session, s))
        out.append(shard)
    return out


def inproc_search(shards: list[Shard], q: np.ndarray, params: SearchParams) -> np.ndarray:
    parts = [s.search(q, params) for s in shards]
    return merge_topk([p[0] for p in parts], [p[1] for p in parts], params.k)[1]


def pick_operating_point(
    shards: list[Shard], queries: np.ndarray, truth: np.ndarray
) -> tuple[SearchParams, float, float]:
    """The fastest (nprobe per shard, quantizer efSearch) reaching the target recall; also the
    nprobe=1 recall."""
    nprobe1 = 0.0
    for nprobe in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128):
        params = SearchParams.defaults(k=K, nprobe=nprobe, ef_search=max(128, 2 * nprobe))
        r = recall_at(inproc_search(shards, queries, params), truth)
        say(f"  nprobe={nprobe:<4} ef={params.ef_search:<4} recall@10={r:.4f}")
        nprobe1 = r if nprobe == 1 else nprobe1
        if r >= TARGET:
            break
    else:
        return params, r, nprobe1
    # The coarse quantizer's efSearch trades against nprobe (a better list choice needs fewer
    # lists): also try a wider quantizer search with fewer lists, and keep the fastest point that
    # reaches the target, as hnswlib's ef is raised until it does.
    candidates = [(params, r)]
    for ef in (192, 256):
        for nprobe in (4, 6, 8, 12, 16, 24):
            if nprobe >= params.nprobe:
                break
            trial = SearchParams.defaults(k=K, nprobe=nprobe, ef_search=ef)
            r_trial = recall_at(inproc_search(shards, queries, trial), truth)
            say(f"  nprobe={nprobe:<4} ef={ef:<4} recall@10={r_trial:.4f}")
            if r_trial >= TARGET:
                candidates.append((trial, r_trial))
                break
    if len(candidates) == 1:
        return params, r, nprobe1
    timed = []
    for trial, r_trial in candidates:
        qps = inproc_qps(shards, queries[:200], trial)
        point = f"nprobe={trial.nprobe:<4} ef={trial.ef_search:<4} recall@10={r_trial:.4f}"
        say(f"  {point}: {qps:.0f} QPS in-process")
        timed.append((qps, trial, r_trial))
    _, params, r = max(timed, key=lambda t: t[0])
    return params, r, nprobe1


def inproc_qps(shards: list[Shard], queries: np.ndarray, params: SearchParams) -> float:
    faiss.omp_set_num_threads(1)
    for q in queries[:20]:
        inproc_search(shards, q[None, :], params)
    started = time.perf_counter()
    for q in queries:
        inproc_search(shards, q[None, :], params)
    return len(queries) / (time.perf_counter() - started)


def start_servers(url: str, work: Path, shards: int) -> tuple[list[Child], list[str]]:
    """One ``mediasearch shard-server`` per shard, on free ports, SERVING; stop with stop_all."""
    ports = free_ports(shards)
    children = []
    try:
        for s, port in enumerate(ports):
            argv = mediasearch_command(
                "shard-server", shard=s, port=port, database_url=url, store_url=(work / "store").as_uri(),
                workers=8, poll_interval=1,
            )  # fmt: skip
            children.append(Child(f"shard-{s}", argv, log_path=work / f"shard{s}.log").start())
        for child, port in zip(children, ports, strict=True):
            child.wait_serving(port)
    except BaseException:
        stop_all(children)
        raise
    return children, [f"127.0.0.1:{p}" for p in ports]


async def served(
    addresses: list[str], queries: np.ndarray, params: SearchParams, concurrency: int, count: int
) -> tuple[np.ndarray, float, np.ndarray]:
    """Latencies (ms) and QPS through the router at ``concurrency`` in-flight searches."""
    router = GrpcRouter([[a] for a in addresses], deadline_s=5.0)
    for q in queries[:50]:  # warm-up: connections, page cache of the memory-mapped segments
        await router.search(q[None, :], params)
    latencies: list[float] = []

    async def worker(offset: int) -> None:
        for i in range(offset, count, concurrency):
            t0 = time.perf_counter()
            await router.search(queries[i % len(queries)][None, :], params)
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    qps = count / (time.perf_counter() - started)
    found = np.concatenate(
        [(await router.search(queries[i : i + 64], params)).ids for i in range(0, len(queries), 64)]
    )
    await router.close()
    return np.array(latencies), qps, found


def index_bytes(work: Path) -> int:
    return sum(p.stat().st_size for p in (work / "store").glob("*/index.faiss"))


def ratio(ours: float, theirs: BaselineResult) -> str:
    return f"{ours / theirs.qps:.1f}" if theirs.qps else "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--served-count", type=int, default=4000, help="searches in the served measurement")
    p.add_argument("--encoding", default="SQ8", help="IVF encoding: SQ8 (default), Flat, SQfp16, PQ<m>")
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

    say("build:")
    build_s, url = build(x, args.shards, work, args.encoding)
    shards = load_shards(url, work, args.shards)
    say("recall vs nprobe (per shard), in-process:")
    params, _, nprobe1 = pick_operating_point(shards, queries, truth)
    qps_in = inproc_qps(shards, queries, params)
    bytes_per_vec = index_bytes(work) / args.n
    del shards

    children, addresses = start_servers(url, work, args.shards)
    try:
        lat1, _, _ = asyncio.run(served(addresses, queries, params, 1, min(1000, args.served_count)))
        lat, qps_served, found = asyncio.run(
            served(addresses, queries, params, args.concurrency, args.served_count)
        )
    finally:
        stop_all(children, timeout_s=30)
    served_recall = recall_at(found, truth)
    p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    say(
        f"ours: build {build_s:.0f}s, {bytes_per_vec:.0f} B/vec, nprobe={params.nprobe} ef={params.ef_search}"
    )
    say(f"  in-process 1 thread: {qps_in:.0f} QPS;  served c1 p50 {np.percentile(lat1, 50):.2f} ms")
    say(
        f"  served c{args.concurrency}: p50 {p50:.2f} ms p99 {p99:.2f} ms, {qps_served:.0f} QPS, "
        f"recall {served_recall:.4f}"
    )

    say("baselines:")
    base_np = numpy_brute_force(x, queries, truth, count=min(30, args.queries))
    say(f"  numpy brute force: {base_np.qps:.1f} QPS, recall {base_np.recall:.3f} (n={args.n})")
    hn = min(args.n, args.hnswlib_n or args.n)
    base_hn = hnswlib_baseline(x[:hn], queries, ground_truth(x[:hn], queries, K), TARGET, args.hnswlib_cap_s)
    say(
        f"  hnswlib 1 thread: {base_hn.qps or 0:.0f} QPS, recall {base_hn.recall:.3f}, {base_hn.setting}, "
        f"n={hn}, build {base_hn.build_s:.0f}s {base_hn.note}"
    )
    pn = min(args.n, args.pgvector_n)
    base_pg = pgvector_baseline(
        x[:pn], queries[:200], ground_truth(x[:pn], queries[:200], K), TARGET, args.concurrency, 2000
    )
    if base_pg.qps is None:
        say(f"  pgvector: SKIPPED: {base_pg.note}")
    else:
        say(
            f"  pgvector c{args.concurrency}: {base_pg.qps:.0f} QPS, recall {base_pg.recall:.3f}, "
            f"{base_pg.setting}, n={pn}, build {base_pg.build_s:.0f}s"
        )
    if hn < args.n:
        say(f"note: hnswlib ran on the first {hn} vectors (build time on 2 cores); a smaller graph is faster")
    if base_pg.qps and pn < args.n:
        say(f"note: pgvector ran on the first {pn} vectors; a smaller graph is faster")
    shutil.rmtree(work, ignore_errors=True)
    say(
        f"index: n={args.n} shards={args.shards} nprobe1_recall@10={nprobe1:.3f} "
        f"recall@10={served_recall:.3f} served_p50_ms={p50:.2f} served_p99_ms={p99:.2f} "
        f"served_qps_c{args.concurrency}={qps_served:.0f} inproc_qps={qps_in:.0f} "
        f"bytes_per_vec={bytes_per_vec:.0f} build_s={build_s:.0f} vs_numpy={ratio(qps_in, base_np)} "
        f"vs_hnswlib={ratio(qps_in, base_hn)} vs_pgvector={ratio(qps_served, base_pg)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
