"""Ingestion end to end: S3 PUTs -> S3 event notifications -> SQS -> ``mediasearch indexer`` (Triton)
-> segments + PostgreSQL -> searchable in a shard; against the raw encoder, in the same run.

    python -m bench.ingest              (make bench-ingest ARGS=...)

Everything is real and local: moto's S3 + SQS server (notifications configured on the bucket),
PostgreSQL on 127.0.0.1:5432 (a throwaway database; SQLite if it is not reachable), a local
``tritonserver`` (CPU flavour) over the offline micro CLIP (``export/micro/model``, 64 px images,
exported once under build/bench/), the indexer as its own process, segments in a local folder (a
shared volume), and in this process a shard of each partition following the manifest (the shard
server's code, without gRPC).

1. Raw encoder: :class:`TritonEncoder.encode_images` (decode + preprocess + Triton) over the same
   images, in batches of the indexer's batch size with as many batches in flight as the indexer
   keeps (2). This is the ceiling the pipeline is measured against.
2. Ingest: PUT the images (4 threads) while the indexer consumes the events. e2e images/s counts
   from the first PUT to the last committed row; PUT -> searchable is, per image, from its PUT
   returning to a shard's view first containing its id.

The last line is the summary:
``ingest: images=N e2e_ips=... encoder_ips=... efficiency=... put_to_searchable_p50_s=...``
(targets: efficiency >= 0.85, p50 <= 5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.models import BUILD

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def micro_repository() -> Path:
    """The micro CLIP exported once under build/bench/micro_repository."""
    from mediasearch.manifest import ModelManifest

    repo = BUILD / "micro_repository"
    if not ModelManifest.path_in(repo, "clip").is_file():
        from export import export_model

        export_model(str(Path(__file__).resolve().parent.parent / "export" / "micro" / "model"), repo, "clip")
    return repo


def images(count: int, seed: int = 7) -> list[bytes]:
    from mediasearch.scenes.gallery import encode_scene, scene_rng
    from mediasearch.scenes.render import render_scene

    return [encode_scene(render_scene(scene_rng(seed, i), 96)[0]) for i in range(count)]


@contextlib.contextmanager
def database() -> Iterator[str]:
    from sqlalchemy import text

    from mediasearch.metadata.db import make_engine

    name = f"mediasearch_bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = make_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"PostgreSQL unavailable ({type(exc).__name__}); using SQLite", flush=True)
        yield f"sqlite:///{BUILD / (name + '.db')}"
        return
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def wait_for(endpoint: str, timeout_s: float = 30.0) -> None:
    import urllib.request

    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def encoder_rate(
    repository: Path, grpc_url: str, data: list[bytes], batch: int, inflight: int
) -> float:
    from mediasearch.encoders import TritonClientOptions, TritonEncoder

    async with TritonEncoder(repository, options=TritonClientOptions(url=grpc_url)) as enc:
        await enc.encode_images(data[:batch])  # warm-up
        gate = asyncio.Semaphore(inflight)

        async def one(chunk: list[bytes]) -> None:
            async with gate:
                (await enc.encode_images(chunk)).raise_first()

        started = time.perf_counter()
        await asyncio.gather(*(one(data[i : i + batch]) for i in range(0, len(data), batch)))
        return len(data) / (time.perf_counter() - started)


class Watcher:
    """Shards following the manifest; records when each id is first searchable."""

    def __init__(self, database_url: str, store_url: str, endpoint: str, shards: int, cache: Path) -> None:
        from mediasearch.index.follower import ManifestFollower
        from mediasearch.index.shard import Shard
        from mediasearch.index.store import open_store
        from mediasearch.metadata.db import make_engine, migrate, session_factory

        engine = make_engine(database_url)
        migrate(engine)
        self.sessions = session_factory(engine)
        store = open_store(store_url, cache_dir=cache, endpoint_url=endpoint)
        self.seen: dict[int, float] = {}
        self._loaded: set[str] = set()
        self.followers = []
        for shard_id in range(shards):
            shard = Shard(shard_id, store)
            follower = ManifestFollower(shard, self.sessions, interval=0.2, on_sync=self._check(shard))
            self.followers.append(follower)

    def _check(self, shard: object):  # type: ignore[no-untyped-def]
        from mediasearch.index.segment import load_vectors

        def on_sync(ok: bool) -> None:
            now = time.time()
            for seg in shard.view.segments:  # type: ignore[attr-defined]
                if seg.record.segment_id not in self._loaded:
                    self._loaded.add(seg.record.segment_id)
                    ids, _ = load_vectors(seg.folder)
                    for i in ids.tolist():
                        self.seen.setdefault(int(i), now)

        return on_sync

    def start(self) -> None:
        for f in self.followers:
            f.start()

    def stop(self) -> None:
        for f in self.followers:
            f.stop()


def run(args: argparse.Namespace) -> str:
    import boto3
    from sqlalchemy import func, select

    from mediasearch.metadata.models import INDEXED, ImageRow
    from mediasearch.triton import LocalTriton, TritonOptions

    os.environ.update(AWS_ENV)
    repository = micro_repository()
    data = images(args.images)
    size_kb = np.mean([len(d) for d in data]) / 1024
    print(f"{len(data)} images of {size_kb:.1f} kB; micro CLIP ({repository}); "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    port = free_port()
    moto = subprocess.Popen(  # its own process: moto's request handling would share our GIL otherwise
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    wait_for(endpoint)
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=8))
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    queue = sqs.create_queue(QueueName=f"{bucket}-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    try:
        with (
            LocalTriton(TritonOptions(repository, ort_threads=args.triton_ort_threads)) as triton,
            database() as db,
        ):
            print(f"tritonserver on {triton.grpc_url}; database {db.split('/')[-1]}", flush=True)
            enc_ips = asyncio.run(encoder_rate(repository, triton.grpc_url, data, args.batch_size, 2))
            print(f"raw encoder (TritonEncoder.encode_images, batch {args.batch_size}, 2 in flight): "
                  f"{enc_ips:.1f} images/s", flush=True)  # fmt: skip
            # Segments on a shared volume (the ARCHITECTURE's other store): moto's one process is
            # already the slowest part here; S3 segment stores are covered by the integration tests.
            store_url = (BUILD / f"ingest-segments-{bucket}").as_uri()
            env = {**os.environ, **{f"MEDIASEARCH_{k}": str(v) for k, v in {
                "DATABASE_URL": db, "SEGMENT_STORE_URL": store_url, "S3_ENDPOINT_URL": endpoint,
                "SEGMENT_CACHE_DIR": BUILD / "ingest-cache", "INDEXER_QUEUE_URL": queue,
                "MODEL_REPOSITORY": repository, "ENCODER": "triton", "TRITON_GRPC_URL": triton.grpc_url,
                "INDEXER_BATCH_SIZE": args.batch_size, "INDEXER_WAIT_TIME_S": 1, "NUM_SHARDS": args.shards,
            }.items()}}  # fmt: skip
            watcher = Watcher(db, store_url, endpoint, args.shards, BUILD / "ingest-watch")
            indexer = subprocess.Popen(
                [sys.executable, "-m", "mediasearch.cli", "indexer", "--exit-when-idle", "30"],
                env=env, stdout=subprocess.DEVNULL, stderr=open(BUILD / "ingest-indexer.log", "w"),  # noqa: SIM115
            )  # fmt: skip
            time.sleep(args.warmup_s)  # the indexer connects to Triton, the database and SQS
            watcher.start()
            put_at: dict[str, float] = {}
            lock = threading.Lock()

            def put(i: int) -> None:
                key = f"photos/{i:05d}.jpg"
                s3.put_object(Bucket=bucket, Key=key, Body=data[i], ContentType="image/jpeg")
                with lock:
                    put_at[key] = time.time()

            first_put = time.time()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(put, range(len(data))))
            put_s = time.time() - first_put
            print(f"PUT {len(data)} images in {put_s:.1f}s ({len(data) / put_s:.1f} PUT/s)", flush=True)
            deadline = time.time() + args.timeout_s
            with watcher.sessions() as s:
                while time.time() < deadline:
                    done = s.scalar(select(func.count()).where(ImageRow.status == INDEXED))
                    s.rollback()
                    if done >= len(data) and len(watcher.seen) >= len(data):
                        break
                    time.sleep(0.2)
                last_commit = s.scalar(select(func.max(ImageRow.indexed)))
                ids = dict(
                    s.execute(select(ImageRow.key, ImageRow.id).where(ImageRow.status == INDEXED)).all()
                )
            indexer.send_signal(signal.SIGTERM)
            indexer.wait(timeout=60)
            watcher.stop()
            time.sleep(1.5)  # the followers' LISTEN connections close before the database is dropped
    finally:
        moto.terminate()
        moto.wait(timeout=30)
    if len(ids) < len(data):
        raise SystemExit(f"only {len(ids)} of {len(data)} images were indexed within {args.timeout_s}s")
    e2e = len(data) / (last_commit.timestamp() - first_put)
    delays = [watcher.seen[ids[k]] - t for k, t in put_at.items() if ids.get(k) in watcher.seen]
    p50 = float(np.percentile(delays, 50))
    p90, load = np.percentile(delays, 90), os.getloadavg()[0]
    put_ips = len(data) / put_s
    print(f"producer: {put_ips:.1f} PUT/s into moto (notifications on); e2e / PUT rate {e2e / put_ips:.2f} "
          "(how closely the indexer kept up with what arrived)")  # fmt: skip
    print(f"end to end: {e2e:.1f} images/s; PUT -> searchable p50 {p50:.2f}s p90 {p90:.2f}s "
          f"max {max(delays):.2f}s; load average {load:.2f}")  # fmt: skip
    return (
        f"ingest: images={len(data)} e2e_ips={e2e:.1f} encoder_ips={enc_ips:.1f} "
        f"efficiency={e2e / enc_ips:.2f} put_to_searchable_p50_s={p50:.2f}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--triton-ort-threads", type=int, default=0, help="0: all cores")
    p.add_argument("--warmup-s", type=float, default=8.0)
    p.add_argument("--timeout-s", type=float, default=600.0)
    args = p.parse_args()
    BUILD.mkdir(parents=True, exist_ok=True)
    print(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
