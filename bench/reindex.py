"""A model upgrade on a live cluster: ``mediasearch reindex`` with a second model while searches go
on, the switch to its generation, and the searches after it; against the raw encoder, in one run.

    python -m bench.reindex             (make bench-reindex ARGS=...)

The ``make up`` cluster on loopback (:mod:`mediasearch.dev.cluster`: moto's S3 + SQS, PostgreSQL
on 127.0.0.1:5432 in a throwaway database (SQLite if it is not reachable), a local ``tritonserver``
(CPU flavour), ``--shards`` shard servers, the indexer, the compactor, the search gateway; segments
in a local folder). Its model repository (cached under build/bench/reindex/) holds two models, both
served by the one Triton: ``clip``, the committed micro CLIP (the first model: indexing with it is
quick), and ``clip2``, the ViT-B/32-shaped random export of :mod:`bench.models` (what a real model
costs to run; another manifest version).

1. **Index with the first model**: ``--images`` images (``--corpus scenes``: the micro model's
   generated scenes as ``--size`` px JPEGs; ``photos``: :mod:`bench.ingest`'s realistic bucket) PUT
   into the bucket, the indexer indexes them; the run waits until every one is indexed and the
   gateway's Stats counts them all.
2. **Raw encoder, first half**: :meth:`TritonEncoder.encode_images` with ``clip2`` on the same
   Triton over the first half of the images (batches of ``--batch-size``, 2 in flight, as the
   pipeline keeps).
3. **Reindex under searches**: one client thread searches the gateway in a loop (the project's
   gRPC :class:`~mediasearch.client.SearchClient`, a few sentences, top 10, ``--search-pause-ms``
   between calls) while ``mediasearch reindex --model-name clip2 --part i/N`` runs as ``--parts``
   subprocesses (what an operator runs; part 0 first, the others once it has made the building
   generation). ``reindex_ips`` = images / the reindex's wall time (first start to last exit).
   Then :func:`switch_to` in one transaction (``switch_ms``: begin to commit), and the searches
   go on ``--after-s`` seconds more.
4. **Raw encoder, second half**: the other half. ``encoder_ips`` = all images / both halves' time
   (split around the reindex, so a change in the machine's outside load hits both figures alike);
   ``efficiency`` = reindex_ips / encoder_ips.

Counted over the searches sent from the reindex's start to the end of ``--after-s``:
``searches_during``; ``failed`` (the call raised); ``wrong_generation``: a response whose
model_version is neither model's, a new-model response to a search sent before the switch began,
an old-model response after a new-model one (one client, one gateway), or a result id that is not an
indexed image. ``missing_after_switch``: indexed images with no vector in the live segments after
the switch (the switch's completeness check, read back from the segments themselves). Partial and
empty responses, and the delay from the commit to the first new-model answer, are printed above
the summary.

The last line is the summary: ``reindex: images=N reindex_ips=... encoder_ips=... efficiency=...
searches_during=... failed=... wrong_generation=... missing_after_switch=... switch_ms=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench._cpu import CpuMeter
from bench.ingest import Bench, corpus, database
from bench.models import BUILD
from mediasearch.dev import emulated_aws
from mediasearch.dev.cluster import ClusterOptions, DevCluster
from mediasearch.dev.processes import mediasearch_command
from mediasearch.dev.workload import Answer, ModelSearcher
from mediasearch.metadata.db import make_engine, session_factory
from mediasearch.settings import Settings

WORK = BUILD / "reindex"
FIRST, SECOND = "clip", "clip2"
ENCODE_INFLIGHT = 2  # the pipeline's PipelineOptions.encode_inflight
SENTENCES = (
    "two red circles", "a dog running on the beach", "three blue squares on white",
    "an old man reading a newspaper", "yellow stars", "a city skyline at night",
)  # fmt: skip


def say(msg: str) -> None:
    print(msg, flush=True)


def repository() -> Path:
    """The cluster's repository: the micro CLIP as ``clip``, the ViT-B/32-shaped one as ``clip2``."""
    from mediasearch.export import export_model
    from mediasearch.export.micro import MODEL_DIR
    from mediasearch.export.random_clip import save_random_clip
    from mediasearch.model_manifest import ModelManifest

    repo = WORK / "model_repository"
    if not ModelManifest.path_in(repo, FIRST).is_file():
        export_model(str(MODEL_DIR), repo, FIRST)
    if not ModelManifest.path_in(repo, SECOND).is_file():
        checkpoint = BUILD / "vit-b-32-random"  # bench/models.py's checkpoint, made once
        if not (checkpoint / "config.json").is_file():
            save_random_clip(checkpoint, "vit-b-32", seed=0)
        t0 = time.perf_counter()
        export_model(str(checkpoint), repo, SECOND)
        say(f"exported the ViT-B/32-shaped CLIP as {SECOND} in {time.perf_counter() - t0:.0f}s")
    return repo


def cluster_options(args: argparse.Namespace, repo: Path, db: str, work: Path) -> ClusterOptions:
    settings = {
        "TRITON_TIMEOUT_S": 120,  # two ViT-B/32 batches in flight on 2 busy cores take 10 s and more
        "INDEXER_BATCH_SIZE": args.batch_size,
        "INDEXER_WAIT_TIME_S": 1,
    }
    return ClusterOptions(
        workdir=work,
        repository=repo,
        database_url=db,
        num_shards=args.shards,
        free_ports=True,
        segment_store_url=(work / "segments").as_uri(),
        shard_workers=2,
        triton_threads=args.triton_ort_threads,
        env={f"MEDIASEARCH_{k}": str(v) for k, v in settings.items()},
    )


async def encoder_seconds(repo: Path, url: str, data: list[bytes], batch: int) -> tuple[float, str]:
    """Seconds ``clip2``'s :meth:`TritonEncoder.encode_images` takes over ``data`` (``batch`` a call,
    2 in flight) after a one-batch warm-up; and the model's version."""
    from mediasearch.encoders import TritonClientOptions, TritonEncoder

    options = TritonClientOptions.defaults(url=url, timeout_s=300)
    async with TritonEncoder(repo, SECOND, options=options) as enc:
        (await enc.encode_images(data[:batch])).raise_first()
        gate = asyncio.Semaphore(ENCODE_INFLIGHT)

        async def one(chunk: list[bytes]) -> None:
            async with gate:
                (await enc.encode_images(chunk)).raise_first()

        started = time.perf_counter()
        await asyncio.gather(*(one(data[i : i + batch]) for i in range(0, len(data), batch)))
        return time.perf_counter() - started, enc.model_version


def judge(answers: list[Answer], old: str, new: str, indexed: set[int], switch_at: float) -> dict[str, Any]:
    """The counts of the module doc, and the wrong answers' descriptions."""
    out: dict[str, Any] = {"failed": 0, "wrong": 0, "partial": 0, "empty": 0, "errors": [], "bad": []}
    seen_new = False
    for a in sorted(answers, key=lambda a: a.done):
        if a.model is None:
            out["failed"] += 1
            out["errors"].append(f"{a.sent - switch_at:+.2f}s: {a.error}")
            continue
        out["partial"] += a.partial
        out["empty"] += not a.ids
        why = None
        if a.model not in (old, new):
            why = f"model {a.model}"
        elif a.model == new and a.sent < switch_at:
            why = "new model before the switch"
        elif a.model == old and seen_new:
            why = "old model after a new-model answer"
        elif not set(a.ids) <= indexed:
            why = f"ids not indexed: {sorted(set(a.ids) - indexed)[:5]}"
        seen_new = seen_new or a.model == new
        if why:
            out["wrong"] += 1
            out["bad"].append(f"{a.sent - switch_at:+.2f}s: {why}")
    firsts = [a.done for a in answers if a.model == new]
    out["first_new_s"] = min(firsts) - switch_at if firsts else float("nan")
    return out


def indexed_ids(sessions: Any) -> set[int]:
    from sqlalchemy import select

    from mediasearch.metadata.models import INDEXED, ImageRow

    with sessions() as s:
        return set(s.scalars(select(ImageRow.id).where(ImageRow.status == INDEXED)))


def live_ids(sessions: Any, store: Any) -> set[int]:
    """Every id the live segments hold."""
    from sqlalchemy import select

    from mediasearch.metadata.models import LIVE, SegmentRow
    from mediasearch.vector_index.segment import IDS_FILE

    with sessions() as s:
        uris = list(s.scalars(select(SegmentRow.uri).where(SegmentRow.state == LIVE)))
    held = [np.load(Path(store.open(u, verify_checksums=False)) / IDS_FILE) for u in uris]
    return set(np.concatenate(held).tolist()) if held else set()


def building(sessions: Any) -> int | None:
    from sqlalchemy import select

    from mediasearch.metadata.models import GenerationRow
    from mediasearch.vector_index.upgrade import BUILDING

    with sessions() as s:
        return s.scalar(select(GenerationRow.number).where(GenerationRow.state == BUILDING))


def wait_for(check: Any, timeout_s: float, what: str) -> float:
    """Seconds until ``check()`` holds; SystemExit after ``timeout_s``."""
    t0 = time.time()
    while not check():
        if time.time() - t0 > timeout_s:
            raise SystemExit(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(0.2)
    return time.time() - t0


def reindex(args: argparse.Namespace, env: dict[str, str], repo: Path, work: Path, sessions: Any) -> float:
    """``--parts`` runs of ``mediasearch reindex``, side by side; their wall time."""
    procs, logs = [], []
    started = time.time()
    for i in range(args.parts):
        argv = mediasearch_command("reindex", model_repository=repo.resolve(), model_name=SECOND,
                                   part=f"{i}/{args.parts}", no_progress=True)  # fmt: skip
        logs.append(work / f"reindex-{i}.log")
        with logs[-1].open("w") as out:
            procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT))
        if i == 0 and args.parts > 1:  # the others once part 0 has made the building generation
            wait_for(lambda: building(sessions) is not None or procs[0].poll() is not None, 300, "reindex")
    codes = [p.wait() for p in procs]
    wall = time.time() - started
    for i, (code, log) in enumerate(zip(codes, logs, strict=True)):
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        say(f"  part {i}/{args.parts} exited {code}; its last lines:\n    " + "\n    ".join(lines[-3:]))
        if code != 0:
            raise SystemExit(f"reindex part {i} failed (exit {code}); log {log}")
    return wall


def run(args: argparse.Namespace) -> str:
    os.environ.update(emulated_aws.ENV)
    from mediasearch.client import SearchClient
    from mediasearch.model_manifest import ModelManifest
    from mediasearch.vector_index.store import LocalFolderStore
    from mediasearch.vector_index.upgrade import switch_to

    repo = repository()
    old = ModelManifest.load(repo, FIRST).version
    n = args.images
    data, _ = corpus(args, n)
    half = n // 2
    say(f"{n} images ({args.corpus}); models {FIRST} ({old}) -> {SECOND} in {repo}; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    work = WORK / f"run-{uuid.uuid4().hex[:8]}"
    with database() as db:
        cluster = DevCluster(cluster_options(args, repo, db, work), Settings.defaults())
        try:
            info = cluster.start()
            say(f"cluster: gateway {info['gateway']}, triton {info['triton']}, database {db.split('/')[-1]}")
            engine = make_engine(db)
            sessions = session_factory(engine)
            store = LocalFolderStore(work / "segments")
            client = SearchClient(info["gateway"], timeout_s=30)
            pids = cluster.pids()
            groups = ("triton", "gateway", "shard", "indexer", "compactor", "moto")
            meter = CpuMeter({g: [p for name, p in pids.items() if name.startswith(g)] for g in groups})
            meter.groups["bench"] = [os.getpid()]

            # 1. index with the first model
            t0 = time.time()
            bucket = emulated_aws.NotifyingBucket.create(info["s3_endpoint"], info["bucket"], notify=False)
            gate = Bench(args, bucket, sessions).backlog_gate("images/", 256)
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(gate, [f"images/{i:05d}.jpg" for i in range(n)], data))
            wait_for(lambda: len(indexed_ids(sessions)) >= n, args.timeout_s, "indexing")
            wait_for(lambda: client.stats().vectors >= n, 120, "the shard servers serving every image")
            indexed = indexed_ids(sessions)
            say(f"indexed {len(indexed)} images with {FIRST} in {time.time() - t0:.0f}s; "
                f"the gateway serves {client.stats().vectors} vectors")  # fmt: skip

            # 2. raw encoder, first half
            enc_a, new = asyncio.run(encoder_seconds(repo, info["triton"], data[:half], args.batch_size))
            say(f"raw encoder ({SECOND}, {new}), images 1-{half}: {half / enc_a:.2f} images/s")

            # 3. reindex while a client searches; the switch; searches after it
            env = {**os.environ, **cluster.children["indexer"].env,
                   "MEDIASEARCH_MODEL_NAME": SECOND, "MEDIASEARCH_LOG_LEVEL": "WARNING"}  # fmt: skip
            searcher = ModelSearcher(
                info["gateway"], SENTENCES, pause_s=args.search_pause_ms / 1000, clock=time.time
            )
            cpu, children0 = meter.snapshot(), resource.getrusage(resource.RUSAGE_CHILDREN)
            searcher.start()
            reindex_s = reindex(args, env, repo, work, sessions)
            used = meter.report(cpu, "the reindex")
            children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            own = sum(getattr(children1, f) - getattr(children0, f) for f in ("ru_utime", "ru_stime"))
            say(f"  the reindex processes: {own:.0f} core-s (in 'other tenants' above); reindex "
                f"{n / reindex_s:.2f} images/s over {reindex_s:.1f}s")  # fmt: skip
            number = building(sessions)
            assert number is not None, "no building generation after the reindex"
            switch_at = time.time()
            t = time.perf_counter()
            with sessions.begin() as session:
                switched = switch_to(session, store, number, args.shards)
            switch_ms = (time.perf_counter() - t) * 1000
            say(f"switch to generation {number} ({switched.model_version}, {switched.vectors} vectors; "
                f"{switched.previous} retired) in {switch_ms:.0f} ms")  # fmt: skip
            follow_s = wait_for(lambda: (st := client.stats()).model_version == new and st.vectors >= n,
                                60, "the gateway and shards following the switch")  # fmt: skip
            time.sleep(max(0.0, args.after_s - (time.time() - switch_at)))
            answers = searcher.stop()
            stats = client.stats()
            say(f"the gateway follows {follow_s:.1f}s after the commit: model {stats.model_version}, "
                f"generation {stats.index_generation}, {stats.vectors} vectors")  # fmt: skip
            missing = len(indexed_ids(sessions) - live_ids(sessions, store))

            # 4. raw encoder, second half
            enc_b, _ = asyncio.run(encoder_seconds(repo, info["triton"], data[half:], args.batch_size))
            say(f"raw encoder, images {half + 1}-{n}: {(n - half) / enc_b:.2f} images/s")
            client.close()
            engine.dispose()
        finally:
            cluster.stop()
    j = judge(answers, old, new, indexed, switch_at)
    for line in j["errors"][:10] + j["bad"][:10]:
        say(f"  {line} (from the switch)")
    say(f"searches: {len(answers)} over {answers[-1].sent - answers[0].sent:.0f}s, {j['partial']} partial, "
        f"{j['empty']} empty; the first new-model answer {j['first_new_s']:.2f}s after the switch; "
        f"triton held {used['triton'] / used['wall_s']:.2f} cores during the reindex")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    reindex_ips, encoder_ips = n / reindex_s, n / (enc_a + enc_b)
    return (
        f"reindex: images={n} reindex_ips={reindex_ips:.2f} encoder_ips={encoder_ips:.2f} "
        f"efficiency={reindex_ips / encoder_ips:.2f} searches_during={len(answers)} failed={j['failed']} "
        f"wrong_generation={j['wrong']} missing_after_switch={missing} switch_ms={switch_ms:.0f}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000, help="images indexed, then reindexed")
    p.add_argument(
        "--corpus",
        choices=["scenes", "photos"],
        default="scenes",
        help="scenes: generated JPEGs (--size px); photos: bench-ingest's realistic bucket",
    )
    p.add_argument("--size", type=int, default=224, help="--corpus scenes: the images' side, px")
    p.add_argument("--parts", type=int, default=1, help="mediasearch reindex --part i/N runs side by side")
    p.add_argument("--batch-size", type=int, default=32, help="the pipeline's batch, and the raw encoder's")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--search-pause-ms", type=float, default=50.0, help="the client's pause between searches")
    p.add_argument("--after-s", type=float, default=5.0, help="searches go on this long after the switch")
    p.add_argument("--triton-ort-threads", type=int, default=0, help="0: all cores")
    p.add_argument("--timeout-s", type=float, default=900.0, help="indexing with the first model")
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    print(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
