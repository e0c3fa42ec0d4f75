"""The query path end to end vs the encoder alone vs baseline 3, side by side in one run.

    python -m bench.query            (make bench-query ARGS=...)

Sets up the cluster's query side on loopback: Triton (CPU flavour) over the ViT-B/32-shaped export
(bench/models.py), ``--n`` bulk-loaded 512-dim vectors in 2 shard servers (index generation 1:
one coarse quantizer, the shards owning its lists, as ``mediasearch compact`` builds it), their
metadata rows in PostgreSQL, and the search gateway (``mediasearch serve``) as its
own process. Queries are distinct, realistic sentences (bench/_queries.py) through the real text
encoder. Measured in the same run:

(a) concurrency 1: SearchText p50 end to end vs TritonEncoder.encode_texts p50 alone (the same
    Triton): the difference is what the system adds (tokenise, Triton hop, fan-out, merge,
    metadata, gRPC).
(b) concurrency 16: end-to-end QPS vs the encoder's own saturated QPS: their ratio is efficiency.
(c) baseline 3 of ARCHITECTURE.md at concurrency 16: per-request text encoding with no batching
    (one ONNX Runtime session, a thread pool), one hnswlib index over the same vectors, one
    metadata query per result row.
Then the overload check: 64 closed-loop callers with a 1 s deadline for ``--overload-s``: every
call is answered or refused with DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED, answered latency stays
bounded, and the gateway is still alive afterwards (a caller refused with RESOURCE_EXHAUSTED backs
off 50 ms, doubling to 1 s, jittered, as a gRPC client with a retry policy would, instead of
retrying at once: an instant-retry storm measures the load generator, not the service).

With ``--auth`` it measures what API keys cost instead: a second gateway over the same shards and
Triton with keys required, and the same calls through both, interleaved round by round: SearchText
(encoder-bound) and GetImage (no encoder: the interceptor chain and one metadata lookup, where a
per-call cost would show) at concurrency 1 and 16. Its summary line starts ``auth:``.

Segments, the hnswlib graph and the database rows are cached under build/bench/query/ (keyed by
--n), so a second run starts in seconds. The last line is the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench._index_data import DataSpec, Generator
from bench._queries import make_queries
from bench.encoders import NaiveEncoder
from bench.models import BUILD, vitb32_repository
from mediasearch._proto.mediasearch.v1 import search_pb2, search_pb2_grpc
from mediasearch.dev.cluster import ClusterOptions, DevCluster
from mediasearch.encoders.triton import TritonClientOptions, TritonEncoder
from mediasearch.settings import Settings

SHARDS = 2
LAYOUT = "generation-v2"  # the cached index's layout: a cache of another layout is rebuilt
K = 10
T0 = "2026-01-01T00:00:00Z"
BACKOFF_S = 0.05  # first back-off of a refused caller; doubles to 1 s, jittered, reset by an answer


def say(msg: str) -> None:
    print(msg, flush=True)


# -- setup ---------------------------------------------------------------------------------------
def prepare(n: int, work: Path, version: str) -> tuple[str, np.ndarray]:
    """Vectors in segments (2 shards) + one images row per vector in PostgreSQL; cached by n."""
    from mediasearch.dev.postgres import ADMIN_URL, create_database, database_exists
    from mediasearch.metadata.db import make_engine, migrate, session_factory
    from mediasearch.metadata.segment_manifest import publish
    from mediasearch.vector_index.builder import BuildConfig
    from mediasearch.vector_index.partition import HashPartitioner
    from mediasearch.vector_index.rebalance import Rebalancer
    from mediasearch.vector_index.store import LocalFolderStore
    from mediasearch.vector_index.writer import stage_segment

    db = f"mediasearch_bench_query_{n}"
    url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{db}"
    x = Generator(DataSpec(n=n, dim=512)).vectors()
    stamp = work / "ready.json"
    if (work / "store").exists() and not stamp.is_file():
        import shutil

        shutil.rmtree(work / "store")
    wanted = {"n": n, "version": version, "layout": LAYOUT}
    if stamp.is_file() and database_exists(url) and json.loads(stamp.read_text()) == wanted:
        say(f"setup: cached {n} vectors in {work} and database {db}")
        _analyze(url)
        return url, x
    create_database(url, replace=True)
    engine = make_engine(url)
    migrate(engine)
    started = time.perf_counter()
    import psycopg

    with psycopg.connect(url.replace("postgresql://", "postgresql://", 1)) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY images (id, bucket, key, etag, size, content_type, width, height, created, indexed, tags,"
            " model_version, shard, status) FROM STDIN"
        ) as copy:
            owner = HashPartitioner(SHARDS).shards_for(np.arange(1, n + 1, dtype=np.int64))
            for i in range(1, n + 1):
                tags = json.dumps(["bench", f"t{i % 7}"])
                copy.write_row((i, "bench-photos", f"photos/{i:07d}.jpg", f"e{i}", 100_000, "image/jpeg",
                                640, 480, T0, T0, tags, version, int(owner[i - 1]), "indexed"))  # fmt: skip
        conn.commit()
    say(f"setup: {n} metadata rows in {time.perf_counter() - started:.0f}s")
    ids = np.arange(1, n + 1, dtype=np.int64)
    owner = HashPartitioner(SHARDS).shards_for(ids)
    store = LocalFolderStore(work / "store")
    sessions = session_factory(engine)
    for s in range(SHARDS):
        t0 = time.perf_counter()
        mine = owner == s
        record = stage_segment(store, x[mine], ids[mine], shard=s, model_version=version,
                               config=BuildConfig.defaults(), work_dir=work)  # fmt: skip
        publish(sessions, add=[record])
        say(f"setup: shard {s} {record.count} vectors {record.index_type} in {time.perf_counter() - t0:.0f}s")
    # what `mediasearch compact` does once the index is this big: generation 1 (one quantizer, the
    # shards owning its lists), so the query path is the production one
    Rebalancer(sessions, store, BuildConfig.defaults(), SHARDS, work_dir=work).run("bench", say=say)
    engine.dispose()
    stamp.write_text(json.dumps(wanted))
    _analyze(url)
    return url, x


def _analyze(url: str) -> None:
    """Planner statistics for the bulk-loaded rows (autovacuum would get there, later): without them
    the id lookup may scan the status index instead of the primary key."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE images")


def hnsw_index(x: np.ndarray, work: Path) -> Any:
    import hnswlib

    path = work / "hnsw.bin"
    index = hnswlib.Index(space="ip", dim=x.shape[1])
    if path.is_file():
        index.load_index(str(path), max_elements=len(x))
    else:
        t0 = time.perf_counter()
        index.init_index(max_elements=len(x), M=16, ef_construction=100, random_seed=1)
        index.set_num_threads(2)
        index.add_items(x, np.arange(1, len(x) + 1))
        index.save_index(str(path))
        say(f"setup: hnswlib M16 over {len(x)} vectors in {time.perf_counter() - t0:.0f}s")
    index.set_ef(128)
    index.set_num_threads(1)
    return index


# -- load ----------------------------------------------------------------------------------------
async def closed_loop(
    call: Callable[[str], Awaitable[object]], queries: list[str], concurrency: int, seconds: float
) -> tuple[list[float], float, collections.Counter[str]]:
    """``concurrency`` callers back to back for ``seconds``: latencies (ms) of answered calls, QPS of
    answered calls, outcome counts by status name."""
    latencies: list[float] = []
    outcomes: collections.Counter[str] = collections.Counter()
    stop_at = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def caller(seed: int) -> None:
        rng = np.random.default_rng(seed)
        backoff = BACKOFF_S
        while time.perf_counter() < stop_at:
            q = queries[next(counter) % len(queries)]
            t0 = time.perf_counter()
            try:
                await call(q)
            except grpc.aio.AioRpcError as exc:
                outcomes[exc.code().name] += 1
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # back off as gRPC retry policies do
                    await asyncio.sleep(backoff * rng.uniform(0.5, 1.5))
                    backoff = min(backoff * 2, 1.0)
                continue
            backoff = BACKOFF_S
            latencies.append((time.perf_counter() - t0) * 1e3)
            outcomes["OK"] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return latencies, len(latencies) / (time.perf_counter() - t0), outcomes


def p(latencies: list[float], q: float) -> float:
    return float(np.percentile(latencies, q)) if latencies else float("nan")


async def measure(
    args: argparse.Namespace, gateway: str, triton_url: str, repo: Path, hnsw: Any, db: str
) -> dict[str, Any]:
    queries = make_queries(3000, seed=1)
    encoder = TritonEncoder(repo, "clip", options=TritonClientOptions.defaults(url=triton_url))
    await encoder.start()
    channel = grpc.aio.insecure_channel(gateway)
    stub = search_pb2_grpc.SearchServiceStub(channel)

    stages: list[tuple[float, ...]] = []

    async def e2e(q: str) -> object:
        response = await stub.SearchText(search_pb2.SearchTextRequest(text=q, top_k=K), timeout=30)
        t = response.timings
        stages.append((t.encode_ms, t.search_ms, t.merge_ms, t.metadata_ms, t.total_ms))
        return response

    async def enc(q: str) -> object:
        return await encoder.encode_texts([q])

    for q in queries[:30]:  # warm-up: connections, Triton instances, page cache
        await e2e(q)
        await enc(q)
    out: dict[str, Any] = {}
    rounds = max(1, args.rounds)
    c1_e2e: list[float] = []
    c1_enc: list[float] = []
    c16_e2e: list[tuple[int, float]] = []
    c16_enc: list[tuple[int, float]] = []
    lat16: list[float] = []
    for r in range(rounds):  # interleaved, so outside noise does not land on one side only
        offset = queries[r * 400 :] + queries[: r * 400]
        stages.clear()
        lat, _, _ = await closed_loop(e2e, offset, 1, args.seconds / 2)
        c1_e2e += lat
        mean = np.mean(stages, axis=0)
        say(f"  c1 inside the gateway (mean ms): encode {mean[0]:.1f} search {mean[1]:.1f} "
            f"merge {mean[2]:.2f} "
            f"metadata {mean[3]:.1f} total {mean[4]:.1f} (client-seen p50 {p(lat, 50):.1f})")  # fmt: skip
        lat, _, _ = await closed_loop(enc, offset[200:], 1, args.seconds / 2)
        c1_enc += lat
        lat, _, _ = await closed_loop(enc, offset, 16, args.seconds)
        c16_enc.append((len(lat), args.seconds))
        lat, _, counts = await closed_loop(e2e, offset[100:], 16, args.seconds)
        c16_e2e.append((len(lat), args.seconds))
        lat16 += lat
        e2e_qps, enc_qps = c16_e2e[-1][0] / args.seconds, c16_enc[-1][0] / args.seconds
        say(f"  round {r + 1}/{rounds}: c1 e2e p50 {p(c1_e2e, 50):.1f} ms, encoder {p(c1_enc, 50):.1f} ms; "
            f"c16 e2e {e2e_qps:.1f} QPS, encoder {enc_qps:.1f} QPS")  # fmt: skip
    out["c1_p50"], out["enc_c1_p50"] = p(c1_e2e, 50), p(c1_enc, 50)
    out["qps16"] = sum(n for n, _ in c16_e2e) / sum(s for _, s in c16_e2e)
    out["enc_qps16"] = sum(n for n, _ in c16_enc) / sum(s for _, s in c16_enc)
    out["p99_16"] = p(lat16, 99)

    say("baseline 3: per-request ONNX Runtime text encoding, one hnswlib index, one metadata query per row")
    out["base_qps16"] = await baseline3(repo, hnsw, db, queries, args.seconds * rounds)

    say(f"overload: 64 callers, 1 s deadline, {args.overload_s:.0f}s")

    async def tight(q: str) -> object:
        return await stub.SearchText(search_pb2.SearchTextRequest(text=q, top_k=K), timeout=1.0)

    lat, qps, counts = await closed_loop(tight, queries, 64, args.overload_s)
    out["overload"] = (lat, qps, counts)
    await channel.close()
    await encoder.close()
    return out


async def baseline3(repo: Path, hnsw: Any, db: str, queries: list[str], seconds: float) -> float:
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import select

    from mediasearch.metadata.db import make_engine, session_factory
    from mediasearch.metadata.models import ImageRow

    naive = NaiveEncoder(repo)
    sessions = session_factory(make_engine(db, pool_size=16, max_overflow=0))
    pool = ThreadPoolExecutor(16)

    def rows(ids: np.ndarray) -> list[Any]:
        with sessions() as session:  # one query per result row
            return [session.scalars(select(ImageRow).where(ImageRow.id == int(i))).first() for i in ids]

    async def one(q: str) -> object:
        loop = asyncio.get_running_loop()
        vector = await naive.encode_text(q)
        ids, _ = await loop.run_in_executor(pool, lambda: hnsw.knn_query(vector[None, :], k=K))
        return await loop.run_in_executor(pool, rows, ids[0])

    for q in queries[:10]:
        await one(q)
    lat, qps, _ = await closed_loop(one, queries[500:], 16, seconds)
    say(f"  baseline 3 c16: {qps:.1f} QPS, p50 {p(lat, 50):.0f} ms, p99 {p(lat, 99):.0f} ms")
    pool.shutdown()
    return qps


# -- main ----------------------------------------------------------------------------------------
def auth_comparison(args: argparse.Namespace, cluster: DevCluster, db: str, work: Path) -> int:
    """A second gateway with keys required beside the cluster's (keys off); the same calls through
    both, interleaved; the summary line ``auth: ...``."""
    from mediasearch.dev.processes import start_gateway
    from mediasearch.metadata.api_keys import create_key
    from mediasearch.metadata.db import make_engine, session_factory

    engine = make_engine(db)
    with session_factory(engine).begin() as session:
        key = create_key(session, f"bench-{int(time.time())}", ["search"], rate_rps=0)  # no rate limit
    engine.dispose()
    env = {**cluster.children["gateway"].env, "MEDIASEARCH_GATEWAY_AUTH": "required"}
    child, port, _ = start_gateway("gateway-auth", env, work / "cluster")
    try:
        result = asyncio.run(_auth_rounds(args, cluster.info["gateway"], f"127.0.0.1:{port}", key))
    finally:
        child.stop()
    parts = []
    for name in ("search_c1", "search_c16", "get_c1", "get_c16"):
        lat_off, lat_on = result[name]["off"], result[name]["on"]
        off, on = p(lat_off, 50), p(lat_on, 50)
        say(f"  {name}: p50 off {off:.2f} ms, on {on:.2f} ms; p99 off {p(lat_off, 99):.2f}, "
            f"on {p(lat_on, 99):.2f} ({len(lat_off)} / {len(lat_on)} calls)")  # fmt: skip
        parts.append(f"{name}_p50_ms_off={off:.2f} {name}_p50_ms_on={on:.2f} {name}_added_ms={on - off:.2f}")
    qps = {w: result["get_c16_qps"][w] for w in ("off", "on")}
    ratio = qps["on"] / qps["off"]
    parts.append(f"get_c16_qps_off={qps['off']:.0f} get_c16_qps_on={qps['on']:.0f} qps_ratio={ratio:.3f}")
    say(f"auth: n={args.n} rounds={args.rounds} " + " ".join(parts))
    return 0


async def _auth_rounds(
    args: argparse.Namespace, off_address: str, on_address: str, key: str
) -> dict[str, Any]:
    queries = make_queries(3000, seed=2)
    rng = np.random.default_rng(0)
    ids = [int(i) for i in rng.integers(1, args.n + 1, size=5000)]
    channels = {"off": grpc.aio.insecure_channel(off_address), "on": grpc.aio.insecure_channel(on_address)}
    metadata = {"off": None, "on": (("authorization", f"Bearer {key}"),)}
    stubs = {w: search_pb2_grpc.SearchServiceStub(c) for w, c in channels.items()}
    out: dict[str, Any] = {n: {"off": [], "on": []} for n in ("search_c1", "search_c16", "get_c1", "get_c16")}
    out["get_c16_qps"] = {"off": 0.0, "on": 0.0}

    def search(which: str) -> Callable[[str], Awaitable[object]]:
        async def call(q: str) -> object:
            request = search_pb2.SearchTextRequest(text=q, top_k=K)
            return await stubs[which].SearchText(request, timeout=30, metadata=metadata[which])

        return call

    def get(which: str) -> Callable[[str], Awaitable[object]]:
        turn = iter(range(10**9))

        async def call(_q: str) -> object:
            request = search_pb2.GetImageRequest(id=ids[next(turn) % len(ids)])
            return await stubs[which].GetImage(request, timeout=30, metadata=metadata[which])

        return call

    for which in ("off", "on"):  # warm-up
        for q in queries[:20]:
            await search(which)(q)
            await get(which)(q)
    seconds = args.seconds / 2
    for r in range(max(1, args.rounds)):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")  # neither side always goes first
        for which in order:
            lat, _, counts = await closed_loop(search(which), queries[r * 300 :], 1, seconds)
            out["search_c1"][which] += lat
            lat, _, counts = await closed_loop(search(which), queries[r * 300 + 100 :], 16, seconds)
            out["search_c16"][which] += lat
            lat, _, counts = await closed_loop(get(which), queries, 1, seconds)
            out["get_c1"][which] += lat
            lat, qps, counts = await closed_loop(get(which), queries, 16, seconds)
            out["get_c16"][which] += lat
            out["get_c16_qps"][which] += qps / max(1, args.rounds)
            if set(counts) != {"OK"}:
                raise SystemExit(f"auth bench: calls failed through the {which} gateway: {dict(counts)}")
        say(f"  round {r + 1}/{args.rounds} done")
    for channel in channels.values():
        await channel.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="bulk-loaded vectors (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per c16 measurement and round")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: %(default)s)")
    ap.add_argument("--overload-s", type=float, default=10.0)
    ap.add_argument("--auth", action="store_true", help="measure API keys on vs off instead (see above)")
    args = ap.parse_args(argv)

    repo, export_s = vitb32_repository()
    if export_s is not None:
        say(f"setup: exported the ViT-B/32-shaped model in {export_s:.0f}s")
    work = BUILD / "query" / f"n{args.n}"
    work.mkdir(parents=True, exist_ok=True)
    from mediasearch.model_manifest import ModelManifest

    url, x = prepare(args.n, work, ModelManifest.load(repo, "clip").version)
    hnsw = hnsw_index(x, work)
    del x
    options = ClusterOptions(
        workdir=work / "cluster",
        repository=repo,
        database_url=url,
        num_shards=SHARDS,
        free_ports=True,
        indexer=False,
        compactor=False,
        segment_store_url=(work / "store").as_uri(),
        shard_workers=4,
        triton_threads=0,  # Triton's default here: the cores shared by the model instances
        env={
            "MEDIASEARCH_SEGMENT_CACHE_DIR": str(work / "cache"),
            "MEDIASEARCH_LOG_LEVEL": "WARNING",
            "MEDIASEARCH_ROUTER_ALLOW_PARTIAL": "false",  # a shard missing its deadline is an error here
        },
    )
    cluster = DevCluster(options, Settings.defaults())
    try:
        info = cluster.start()
        say(f"cluster: triton {info['triton']}, shards {info['shards']}, gateway {info['gateway']}")
        if args.auth:
            return auth_comparison(args, cluster, url, work)
        out = asyncio.run(measure(args, info["gateway"], info["triton"], repo, hnsw, url))
        alive = cluster.children["gateway"].running()
    finally:
        cluster.stop()
    lat, qps, counts = out["overload"]
    other = {k: v for k, v in counts.items() if k not in ("OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")}
    graceful = alive and not other and (not lat or p(lat, 99) <= 1000 * 1.2)
    say(
        f"overload: {dict(counts)}; answered {qps:.1f} QPS, p50 {p(lat, 50):.0f} ms, "
        f"p99 {p(lat, 99):.0f} ms, max {max(lat) if lat else float('nan'):.0f} ms; gateway alive: {alive} -> "
        + ("graceful" if graceful else f"NOT graceful {other}")
    )
    overhead = out["c1_p50"] - out["enc_c1_p50"]
    say(
        f"query: n={args.n} c1_p50_ms={out['c1_p50']:.1f} encoder_c1_p50_ms={out['enc_c1_p50']:.1f} "
        f"overhead_p50_ms={overhead:.1f} qps_c16={out['qps16']:.1f} p99_ms_c16={out['p99_16']:.0f} "
        f"encoder_qps_c16={out['enc_qps16']:.1f} efficiency={out['qps16'] / out['enc_qps16']:.2f} "
        f"baseline_qps_c16={out['base_qps16']:.1f} speedup_c16={out['qps16'] / out['base_qps16']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
