"""Ingestion end to end: S3 PUTs -> S3 event notifications -> SQS -> ``mediasearch indexer`` (Triton)
-> segments + PostgreSQL -> searchable in shard-server processes; against the raw encoder, in the
same run.

    python -m bench.ingest              (make bench-ingest ARGS=...)

Everything is real and local: the ``make up`` cluster (:mod:`mediasearch.dev.cluster`) without its
gateway and compactor: moto's S3 + SQS server in its own process (the bucket notifying the queue),
PostgreSQL on 127.0.0.1:5432 (a throwaway database; SQLite if it is not reachable), a local
``tritonserver`` (CPU flavour) over the ViT-B/32-shaped CLIP of :mod:`bench.models` (random weights,
production's compute cost; exported once under build/bench/), ``mediasearch indexer`` with
``MEDIASEARCH_ENCODER=triton``, segments in a local folder (a shared volume), and one
``mediasearch shard-server`` per shard. The images (``--corpus``) are a realistic bucket by default
(:mod:`mediasearch.dev.photo_corpus`: 40% 12 Mpx phone JPEGs, some stored sideways with an EXIF
orientation, 30% 1-4 Mpx JPEGs, 15% PNG screenshots, 10% WebP, 5% small images; generated once
under build/bench/), or ``scenes``: the micro model's generated scenes (``--size`` px JPEGs, a few kB).

First, **decoding alone** (photos): every image prepared on one core the indexer's way (reduced
decoding) and the exact way (full-size decode, as CLIP's reference processor), in this process:
``decode_ms_p50``/``_p99`` are the reduced path's on the 12 Mpx JPEGs, printed beside the exact
path's.

The indexer is warmed up (one image PUT, indexed and searchable), then:

1. **Raw encoder, first half**: :meth:`TritonEncoder.encode_images` (decode + preprocess + Triton)
   over the first half of the images, in batches of the indexer's batch size with as many batches in
   flight as the indexer keeps (2). The indexer is idle meanwhile.
2. **Throughput (burst)**: PUT all ``--images`` images as fast as moto accepts them (4 threads; moto
   takes a few dozen PUT/s, several times what this encoder does) while the indexer consumes the
   events, but never more than ``--max-backlog`` (256) ahead of what the indexer has recorded: the
   encoder always has 8 batches waiting, and the SQS queue stays a few hundred deep. Unbounded
   (``--max-backlog 0``), the queue reaches 2,000 messages and moto, on the same 2 cores, then
   spends more CPU per received message (221 ms at 2,000 deep, 12 ms at 100) than the encoder
   spends per image, so the figure measured the emulator (efficiency 0.70 measured that way on
   2026-11-28). ``e2e_ips`` = images / (last committed row - first PUT).
3. **Raw encoder, second half**: the other half of the same images. ``encoder_ips`` = all images /
   the two halves' time; splitting it around the burst brackets the burst in time, so a change in
   the machine's outside load hits both figures alike. ``efficiency`` = e2e_ips / encoder_ips.
4. **Latency (paced)**: ``--latency-images`` further images PUT one at a time at a fixed rate that
   the pipeline sustains (``--latency-rate``; default half the e2e rate just measured), and for
   each the delay from its PUT returning to a shard server first serving it.

Why two phases: every image of a burst waits behind the ones PUT before it, so its PUT -> searchable
delays measure the queue, not the pipeline (printed only as such). "Delay while ingesting" is what an
image waits when images arrive at a rate the pipeline keeps up with: the paced phase, whose small
batches (what arrived within ``INDEXER_BATCH_WAIT_MS``) keep the delay short.

Searchable is observed from outside, as a client would (:mod:`bench._ingest_watch`; paused during
the raw encoder phases). Each phase prints where the CPU went (:mod:`bench._cpu`): moto, the
emulated S3 and SQS, runs on the same cores here and not in production, and its SQS ReceiveMessage
costs CPU in proportion to the queue's depth, which a burst keeps deep.

``pipeline_cpu_ms_per_image`` is the CPU the burst cost per image in the indexer (its decode
workers included), PostgreSQL and the shard servers: what production runs besides the encoder (moto,
the emulated S3 and SQS, and the PUT client are left out). 1000 over it is the images per second one
core of the pipeline sustains without the encoder: what sizes indexer replicas for a GPU node.

The last line is the summary:
``ingest: corpus=... images=N mean_mpix=... e2e_ips=... encoder_ips=... efficiency=...
pipeline_cpu_ms_per_image=... decode_ms_p50=... decode_ms_p99=... put_to_searchable_p50_s=...``
(targets on the photo corpus: pipeline_cpu_ms_per_image <= 25, decode_ms_p50 4x under the exact
path's, efficiency >= 0.85, p50 <= 5 s; the p50 is the paced phase's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from bench._cpu import CpuMeter
from bench._ingest_watch import Searchable
from bench.models import BUILD, vitb32_repository
from mediasearch.dev import emulated_aws, photo_corpus, postgres
from mediasearch.dev.cluster import ClusterOptions, DevCluster
from mediasearch.dev.photo_corpus import CorpusImage
from mediasearch.metadata.db import make_engine, session_factory
from mediasearch.settings import Settings

ENCODE_INFLIGHT = 2  # the indexer's PipelineOptions.encode_inflight


def images(count: int, size: int, seed: int = 7) -> list[bytes]:
    from mediasearch.export.micro.scenes.gallery import encode_scene, scene_rng
    from mediasearch.export.micro.scenes.render import render_scene

    return [encode_scene(render_scene(scene_rng(seed, i), size)[0]) for i in range(count)]


def corpus(args: argparse.Namespace, count: int) -> tuple[list[bytes], list[CorpusImage]]:
    """``count`` images of ``--corpus`` and their descriptions."""
    if args.corpus == "scenes":
        data = images(count, args.size)
        return data, [
            CorpusImage(f"scenes/{i:05d}.jpg", "scene", args.size, args.size, len(d), "image/jpeg", 1)
            for i, d in enumerate(data)
        ]
    t0 = time.time()
    made = photo_corpus.corpus(count, BUILD)
    print(f"corpus ready in {time.time() - t0:.0f}s under {BUILD}", flush=True)
    return [d for d, _ in made], [it for _, it in made]


def decode_times(data: list[bytes], items: list[CorpusImage], spec: Any) -> dict[str, list[float]]:
    """Milliseconds to prepare each image on one core, reduced (``reduced``) and exact (``exact``),
    and the same for the 12 Mpx JPEGs only (``phone_reduced``, ``phone_exact``)."""
    from mediasearch.preprocess.image import prepare_image

    out: dict[str, list[float]] = {"reduced": [], "exact": [], "phone_reduced": [], "phone_exact": []}
    prepare_image(data[0], spec)  # warm-up
    for d, it in zip(data, items, strict=True):
        for exact, name in ((False, "reduced"), (True, "exact")):
            t = time.perf_counter()
            prepare_image(d, spec, exact=exact)
            ms = (time.perf_counter() - t) * 1000
            out[name].append(ms)
            if it.kind == "phone-jpeg":
                out[f"phone_{name}"].append(ms)
    return out


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A throwaway PostgreSQL database, or a SQLite file when the server is not reachable."""
    if not postgres.available():
        print("PostgreSQL unavailable; using SQLite", flush=True)
        yield f"sqlite:///{BUILD / f'ingest-{uuid.uuid4().hex[:8]}.db'}"
        return
    with postgres.throwaway_database("mediasearch_bench") as url:
        yield url


def cluster_options(args: argparse.Namespace, repository: Path, database_url: str) -> ClusterOptions:
    """``make up``'s cluster without the gateway and the compactor: moto (its own process), Triton
    (all cores), the indexer, ``--shards`` shard servers; segments on a local folder (a shared
    volume: moto's one process is busy enough with S3 and SQS; S3 segment stores are covered by the
    integration tests)."""
    work = BUILD / f"ingest-{uuid.uuid4().hex[:8]}"
    settings = {
        # two batches of 32 in flight take 8-12 s each on 2 busy cores: over the 30 s default at times
        "TRITON_TIMEOUT_S": 120,
        "INDEXER_BATCH_SIZE": args.batch_size,
        "INDEXER_WAIT_TIME_S": 1,
        "SHARD_POLL_INTERVAL_S": 1,
        "IMAGE_DECODE_POOL": args.decode_pool,
    }
    return ClusterOptions(
        workdir=work,
        repository=repository,
        database_url=database_url,
        num_shards=args.shards,
        free_ports=True,
        compactor=False,
        gateway=False,
        segment_store_url=(work / "segments").as_uri(),
        shard_workers=2,
        triton_threads=args.triton_ort_threads,
        env={f"MEDIASEARCH_{k}": str(v) for k, v in settings.items()},
    )


async def encoder_seconds(repository: Path, grpc_url: str, data: list[bytes], batch: int) -> float:
    """Seconds :meth:`TritonEncoder.encode_images` takes over ``data`` (batches of ``batch``, as many
    in flight as the indexer keeps), after a one-batch warm-up."""
    from mediasearch.encoders import TritonClientOptions, TritonEncoder

    options = TritonClientOptions.defaults(url=grpc_url, timeout_s=300)
    async with TritonEncoder(repository, options=options) as enc:
        await enc.encode_images(data[:batch])  # warm-up: connection, first run
        gate = asyncio.Semaphore(ENCODE_INFLIGHT)

        async def one(chunk: list[bytes]) -> None:
            async with gate:
                (await enc.encode_images(chunk)).raise_first()

        started = time.perf_counter()
        await asyncio.gather(*(one(data[i : i + batch]) for i in range(0, len(data), batch)))
        return time.perf_counter() - started


class Bench:
    def __init__(self, args: argparse.Namespace, bucket: emulated_aws.NotifyingBucket, sessions: Any) -> None:
        self.args, self.objects, self.bucket, self.sessions = args, bucket, bucket.name, sessions

    def put(self, key: str, body: bytes) -> float:
        self.objects.put(key, body, _content_type(body))
        return time.time()

    def wait_indexed(
        self, keys: list[str], watcher: Searchable, timeout_s: float
    ) -> tuple[dict[str, int], float]:
        """Waits until every key is indexed and served; its ids and the last commit time (unix)."""
        from sqlalchemy import func, select

        from mediasearch.metadata.models import INDEXED, ImageRow

        wanted = set(keys)
        deadline = time.time() + timeout_s
        ids: dict[str, int] = {}
        with self.sessions() as s:
            while True:
                rows = s.execute(
                    select(ImageRow.key, ImageRow.id).where(
                        ImageRow.bucket == self.bucket, ImageRow.status == INDEXED
                    )
                ).all()
                ids = {k: i for k, i in rows if k in wanted}
                if len(ids) == len(wanted) and all(i in watcher.seen for i in ids.values()):
                    break
                s.rollback()
                if time.time() > deadline:
                    failed = s.scalar(
                        select(func.count()).where(ImageRow.bucket == self.bucket, ImageRow.status != INDEXED)
                    )
                    raise SystemExit(
                        f"only {len(ids)} of {len(wanted)} images indexed ({failed} rows not indexed) and "
                        f"{sum(i in watcher.seen for i in ids.values())} served within {timeout_s:.0f}s"
                    )
                time.sleep(0.2)
            last = s.scalar(select(func.max(ImageRow.indexed)).where(ImageRow.id.in_(list(ids.values()))))
        return ids, last.timestamp()

    def backlog_gate(self, prefix: str, max_backlog: int) -> Callable[[str, bytes], float]:
        """``put``, held back while ``max_backlog`` PUTs under ``prefix`` are not yet recorded.

        The source then stays ahead of the encoder (the pipeline never starves) without a queue
        thousands deep: moto's SQS spends CPU in proportion to the queue's depth on every receive,
        on the encoder's cores; real SQS does not. 0 disables the gate (an unbounded burst).
        """
        from sqlalchemy import func, select

        from mediasearch.metadata.models import PENDING, ImageRow

        lock, put_count = threading.Lock(), [0]

        def recorded() -> int:
            with self.sessions() as s:
                query = select(func.count()).where(
                    ImageRow.bucket == self.bucket,
                    ImageRow.key.startswith(prefix),
                    ImageRow.status != PENDING,
                )
                return int(s.scalar(query) or 0)

        def gated_put(key: str, body: bytes) -> float:
            if max_backlog:
                with lock:
                    while put_count[0] - recorded() >= max_backlog:
                        time.sleep(0.2)
                    put_count[0] += 1
            return self.put(key, body)

        return gated_put

    def committed_by(self, ids: list[int], when: float) -> int:
        from datetime import UTC, datetime

        from sqlalchemy import func, select

        from mediasearch.metadata.models import ImageRow

        cutoff = datetime.fromtimestamp(when, UTC)
        with self.sessions() as s:
            return int(
                s.scalar(select(func.count()).where(ImageRow.id.in_(ids), ImageRow.indexed <= cutoff)) or 0
            )


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run(args: argparse.Namespace) -> str:
    os.environ.update(emulated_aws.ENV)
    repository, exported = vitb32_repository()
    if exported is not None:
        print(f"exported the ViT-B/32-shaped CLIP in {exported:.0f}s", flush=True)
    photos = args.corpus == "photos"
    n = args.images or (200 if photos else 2000)
    m = args.latency_images or (40 if photos else 300)
    data, items = corpus(args, n + m + 1)
    burst, paced, warm = data[:n], data[n : n + m], data[-1]
    mean_mpix = float(np.mean([it.megapixels for it in items[:n]]))
    print(f"{len(data)} images: {photo_corpus.describe(items) if photos else f'{args.size} px scenes'}; "
          f"ViT-B/32-shaped CLIP ({repository}); {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    from mediasearch.model_manifest import ModelManifest

    spec = ModelManifest.load(repository).image
    times = decode_times(burst, items[:n], spec)
    phone = ("phone_reduced", "phone_exact") if times["phone_reduced"] else ("reduced", "exact")
    fast, slow = (pct(times[phone[0]], q) for q in (50, 99)), pct(times[phone[1]], 50)
    decode_p50, decode_p99 = fast
    print(f"decode on one core ({'12 Mpx JPEGs' if phone[0].startswith('phone') else 'all images'}): "
          f"reduced p50 {decode_p50:.1f} ms p99 {decode_p99:.1f} ms; exact p50 {slow:.1f} ms: "
          f"{slow / decode_p50:.1f}x; whole corpus reduced p50 {pct(times['reduced'], 50):.1f} ms, "
          f"exact {pct(times['exact'], 50):.1f} ms, mean {np.mean(times['reduced']):.1f} / "
          f"{np.mean(times['exact']):.1f} ms", flush=True)  # fmt: skip
    started = time.time()
    with database() as db:
        cluster = DevCluster(cluster_options(args, repository, db), Settings.defaults())
        watcher: Searchable | None = None
        try:
            info = cluster.start()
            print(f"cluster: tritonserver on {info['triton']}, moto on {info['s3_endpoint']}, "
                  f"database {db.split('/')[-1]}", flush=True)  # fmt: skip
            engine = make_engine(db)
            sessions = session_factory(engine)
            watcher = Searchable(info["shards"], Path(urlparse(info["segment_store_url"]).path))
            watcher.start()
            bucket = emulated_aws.NotifyingBucket.create(info["s3_endpoint"], info["bucket"], notify=False)
            bench = Bench(args, bucket, sessions)
            pids = cluster.pids()
            meter = CpuMeter({
                "triton": [pids["triton"]], "moto": [pids["moto"]], "indexer": [pids["indexer"]],
                "shard servers": [pids[f"shard-{s}"] for s in range(args.shards)], "bench": [os.getpid()],
            })  # fmt: skip

            # 0. warm-up: the indexer connects to Triton, the database and SQS; one image end to end
            t0 = time.time()
            bench.put("warmup/0.jpg", warm)
            bench.wait_indexed(["warmup/0.jpg"], watcher, 180)
            print(f"warm-up: one image PUT -> searchable in {time.time() - t0:.1f}s", flush=True)

            # 1. raw encoder, first half (the indexer idles)
            half = n // 2
            watcher.running.clear()
            load_a, cpu = os.getloadavg()[0], meter.snapshot()
            enc_a = asyncio.run(encoder_seconds(repository, info["triton"], burst[:half], args.batch_size))
            print(f"raw encoder, images 1-{half}: {half / enc_a:.2f} images/s "
                  f"(load average {load_a:.2f})", flush=True)  # fmt: skip
            raw_cpu = meter.report(cpu, "raw encoder, first half")
            triton_cpu = raw_cpu["triton"]
            watcher.running.set()

            # 2. throughput: a burst of PUTs
            load_b, cpu = os.getloadavg()[0], meter.snapshot()
            keys = [f"burst/{i:05d}.jpg" for i in range(n)]
            first_put = time.time()
            gate = bench.backlog_gate("burst/", args.max_backlog)
            with ThreadPoolExecutor(4) as pool:
                put_at = dict(zip(keys, pool.map(gate, keys, burst), strict=True))
            put_s = max(put_at.values()) - first_put
            print(f"burst: PUT {n} images in {put_s:.1f}s ({n / put_s:.1f} PUT/s into moto, "
                  "notifications on)", flush=True)  # fmt: skip
            ids, last_commit = bench.wait_indexed(keys, watcher, args.timeout_s)
            burst_cpu = meter.report(cpu, "the burst, first PUT to all searchable")
            e2e_s = last_commit - first_put
            e2e = n / e2e_s
            during = bench.committed_by(list(ids.values()), first_put + put_s)
            print(f"burst: {during} committed while PUTs went on ({during / put_s:.2f}/s), the other "
                  f"{n - during} after ({(n - during) / (last_commit - first_put - put_s):.2f}/s)",
                  flush=True)  # fmt: skip
            backlog = [watcher.seen[ids[k]] - t for k, t in put_at.items()]
            print(f"burst: {n} images committed {e2e_s:.1f}s after the first PUT: {e2e:.2f} images/s; "
                  f"load average {load_b:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
            print(f"burst: PUT -> searchable p50 {pct(backlog, 50):.1f}s max {max(backlog):.1f}s "
                  "(the backlog's wait, not the pipeline's delay)", flush=True)  # fmt: skip

            # 3. raw encoder, second half
            watcher.running.clear()
            load_c, cpu = os.getloadavg()[0], meter.snapshot()
            enc_b = asyncio.run(encoder_seconds(repository, info["triton"], burst[half:], args.batch_size))
            print(f"raw encoder, images {half + 1}-{n}: {(n - half) / enc_b:.2f} images/s "
                  f"(load average {load_c:.2f})", flush=True)  # fmt: skip
            raw_b = meter.report(cpu, "raw encoder, second half")
            triton_cpu += raw_b["triton"]
            share = {g: burst_cpu[g] / burst_cpu["wall_s"] for g in ("triton", "moto", "other tenants")}
            alone = triton_cpu / (n + 2 * args.batch_size)  # each half starts with a warm-up batch
            print(f"triton CPU per image: {alone:.3f} core-s alone, "
                  f"{burst_cpu['triton'] / n:.3f} in the burst; cores held in the burst: triton "
                  f"{share['triton']:.2f}, moto {share['moto']:.2f}, the other tenants "
                  f"{share['other tenants']:.2f} (of {os.cpu_count()})", flush=True)  # fmt: skip
            enc_ips = n / (enc_a + enc_b)
            # The same ratio in CPU rather than wall time, counting only what production runs on
            # these cores: the raw encoder's images (Triton + this process's decoding) against
            # the pipeline's (Triton + indexer + shard servers + PostgreSQL); moto and the PUT
            # client are left out (in production S3, SQS and the uploaders are elsewhere).
            ours = sum(burst_cpu[g] for g in ("triton", "indexer", "shard servers", "postgres")) / n
            pipeline_ms = sum(burst_cpu[g] for g in ("indexer", "shard servers", "postgres")) / n * 1000
            print(f"pipeline without the encoder: {pipeline_ms:.1f} CPU-ms per image (indexer with its "
                  f"decode workers {burst_cpu['indexer'] / n * 1000:.1f}, PostgreSQL "
                  f"{burst_cpu['postgres'] / n * 1000:.1f}, shard servers "
                  f"{burst_cpu['shard servers'] / n * 1000:.1f}): one core sustains "
                  f"{1000 / pipeline_ms:.0f} images/s", flush=True)  # fmt: skip
            raw = (triton_cpu + raw_cpu["bench"] + raw_b["bench"]) / (n + 2 * args.batch_size)
            print(f"cpu per image: raw encoder {raw * 1000:.0f} ms, pipeline {ours * 1000:.0f} ms "
                  f"(moto {burst_cpu['moto'] / n * 1000:.0f} ms and the PUT client "
                  f"{burst_cpu['bench'] / n * 1000:.0f} ms not counted): efficiency without the "
                  f"emulator on these cores {raw / ours:.2f}", flush=True)  # fmt: skip
            watcher.running.set()

            # 4. latency: PUTs paced at a rate the pipeline sustains
            rate = args.latency_rate or round(e2e / 2, 1)
            keys = [f"paced/{i:05d}.jpg" for i in range(m)]
            put_at = {}
            t0, cpu = time.time(), meter.snapshot()
            for i, (key, body) in enumerate(zip(keys, paced, strict=True)):
                time.sleep(max(0.0, t0 + i / rate - time.time()))
                put_at[key] = bench.put(key, body)
            ids, _ = bench.wait_indexed(keys, watcher, args.timeout_s)
            meter.report(cpu, "the paced phase")
            delays = [watcher.seen[ids[k]] - t for k, t in put_at.items()]
            p50, p90 = pct(delays, 50), pct(delays, 90)
            achieved = (m - 1) / (max(put_at.values()) - min(put_at.values()))
            print(f"paced: {m} images PUT at {rate:.1f}/s ({achieved:.2f}/s achieved); "
                  f"PUT -> searchable p50 {p50:.2f}s p90 {p90:.2f}s max {max(delays):.2f}s; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
            indexer = cluster.children["indexer"]
            indexer.stop(timeout_s=60)
            assert indexer.log_path is not None
            warnings = len(re.findall(r"WARNING|ERROR", indexer.log_path.read_text(errors="replace")))
            print(f"indexer log {indexer.log_path}: {warnings} warning/error lines; shard servers served "
                  f"{len(watcher.segments)} segments ({watcher.search_misses} Search checks retried); "
                  f"whole bench {time.time() - started:.0f}s", flush=True)  # fmt: skip
            engine.dispose()
        finally:
            if watcher is not None:
                watcher.close()
            cluster.stop()
    print(f"raw encoder: {enc_ips:.2f} images/s over the same {n} images (batch {args.batch_size}, "
          f"{ENCODE_INFLIGHT} in flight, two halves around the burst); "
          f"efficiency {e2e / enc_ips:.2f}")  # fmt: skip
    return (
        f"ingest: corpus={args.corpus} images={n} mean_mpix={mean_mpix:.1f} e2e_ips={e2e:.1f} "
        f"encoder_ips={enc_ips:.1f} efficiency={e2e / enc_ips:.2f} "
        f"pipeline_cpu_ms_per_image={pipeline_ms:.1f} decode_ms_p50={decode_p50:.1f} "
        f"decode_ms_p99={decode_p99:.1f} put_to_searchable_p50_s={p50:.2f}"
    )


def _content_type(body: bytes) -> str:
    if body.startswith(b"\x89PNG"):
        return "image/png"
    if body[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--corpus",
        choices=["photos", "scenes"],
        default="photos",
        help="photos: a realistic bucket (12 Mpx JPEGs, screenshots, WebP...); scenes: small generated JPEGs",
    )
    p.add_argument(
        "--images", type=int, default=0, help="burst and raw encoder images (0: 200 photos or 2000 scenes)"
    )
    p.add_argument(
        "--latency-images",
        type=int,
        default=0,
        help="images PUT at a paced rate (0: 40 photos or 300 scenes)",
    )
    p.add_argument(
        "--latency-rate", type=float, default=0.0, help="paced PUTs per second (0: half the burst's e2e rate)"
    )
    p.add_argument(
        "--max-backlog",
        type=int,
        default=256,
        help="throughput phase: PUTs wait while this many are not yet indexed (0: an unbounded burst)",
    )
    p.add_argument("--size", type=int, default=160, help="--corpus scenes: the images' side, px")
    p.add_argument(
        "--batch-size", type=int, default=32, help="the indexer's batch size, and the raw encoder's"
    )
    p.add_argument("--shards", type=int, default=2)
    p.add_argument(
        "--decode-pool", choices=["process", "thread"], default="process", help="the indexer's decode workers"
    )
    p.add_argument("--triton-ort-threads", type=int, default=0, help="0: all cores")
    p.add_argument("--timeout-s", type=float, default=900.0, help="per phase")
    args = p.parse_args()
    BUILD.mkdir(parents=True, exist_ok=True)
    print(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
