"""Load for chaos and soak runs: the cluster they run on, steady ingestion with a ledger of what
each key should end as, and search callers that record every outcome.

- :func:`load_cluster`: the ``make up`` cluster (:class:`~mediasearch.dev.cluster.DevCluster`) as a
  deployment runs it (two shard servers per shard, two gateways) over a PostgreSQL server of the
  run's own (:class:`~mediasearch.dev.postgres.LocalPostgres`, so it can be restarted), segments in
  a folder (a shared volume: the emulator keeps S3 in memory), the supervisor in a thread.
- :class:`Ingestion`: PUTs of new keys, overwrites, deletes and re-PUTs of deleted keys into the
  notifying bucket at a steady rate, every body a different image (the indexer recognises an
  object by bucket, key and ETag). A key is touched again only after ``key_quiet_s``: the emulator
  stamps every event with the same ``sequencer``, so two events of one key that arrive close
  together cannot be ordered by anyone (real S3 can). Its :class:`Ledger` says what the index must
  hold at the end.
- :class:`ModelSearcher`: one caller recording which model answered each search, with which ids
  (what a model switch and a rollback are judged by: the reindex test and benchmark).
- :class:`SearchLoad`: callers in threads, each a closed loop of SearchText calls through a channel
  spread over the gateways that report SERVING (:func:`mediasearch.client.open_channel`), valid
  queries and, if asked, requests the gateway must refuse with INVALID_ARGUMENT; every call becomes
  an :class:`Outcome` (when, how long, which status code, partial or not).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from mediasearch.dev import emulated_aws
from mediasearch.dev.cluster import QUEUE, ClusterOptions, DevCluster
from mediasearch.dev.postgres import LocalPostgres
from mediasearch.export.micro.scenes.gallery import encode_scene, scene_rng
from mediasearch.export.micro.scenes.render import render_scene
from mediasearch.export.micro.scenes.vocab import BACKGROUNDS, COLOURS, COUNTS, SHAPES, SIZES
from mediasearch.model_manifest import ModelManifest
from mediasearch.settings import Settings

SCENE_PX = 64  # the vision tower resizes to its own size anyway; small scenes render fast
#: Settings of every service in chaos and soak runs: a stopping server reports NOT_SERVING and keeps
#: serving for 1 s (clients watch health, so that is enough), the indexer finishes its batch
#: within 5 s, long polls are short (a stopping indexer is not held up by one).
LOAD_ENV = {
    "MEDIASEARCH_SHUTDOWN_DELAY_S": "1",
    "MEDIASEARCH_SHUTDOWN_GRACE_S": "5",
    "MEDIASEARCH_INDEXER_STOP_GRACE_S": "5",
    "MEDIASEARCH_INDEXER_WAIT_TIME_S": "2",
}


# -- the cluster ---------------------------------------------------------------------------------
@dataclass
class LoadCluster:
    """A running cluster for a load run; ``addresses``: every gateway, comma-separated."""

    cluster: DevCluster
    postgres: LocalPostgres
    info: dict[str, Any]
    bucket: emulated_aws.NotifyingBucket
    dim: int

    @property
    def addresses(self) -> str:
        return ",".join(self.info["gateways"])

    def replicas(self) -> list[list[str]]:
        """The shard servers' addresses, per shard."""
        return [entry.split("|") for entry in self.info["shards"]]


@contextlib.contextmanager
def load_cluster(
    repository: Path,
    workdir: Path,
    *,
    replicas: int = 2,
    gateways: int = 2,
    env: Mapping[str, str] | None = None,
) -> Iterator[LoadCluster]:
    """Start PostgreSQL and the cluster (its supervisor in a thread); stop both afterwards."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with LocalPostgres(log_path=workdir / "postgres.log") as pg:
        options = ClusterOptions(
            workdir=workdir,
            repository=repository,
            database_url=pg.url("mediasearch"),
            replicas=replicas,
            gateways=gateways,
            free_ports=True,
            segment_store_url=(workdir / "segments").as_uri(),
            shard_workers=2,
            compact_every_s=2.0,
            env={**LOAD_ENV, **(env or {})},
        )
        cluster = DevCluster(options, Settings.defaults())
        supervisor = threading.Thread(target=cluster.supervise, name="supervisor", daemon=True)
        try:
            info = cluster.start()
            supervisor.start()
            for name in cluster.ports:
                cluster.wait_ready(name)
            bucket = emulated_aws.NotifyingBucket.create(
                info["s3_endpoint"], info["bucket"], queue=QUEUE, notify=False
            )
            dim = ModelManifest.load(repository).embedding_dim
            yield LoadCluster(cluster, pg, info, bucket, dim)
        finally:
            cluster.request_stop()
            if supervisor.is_alive():
                supervisor.join(timeout=30)
            cluster.stop()


# -- ingestion -----------------------------------------------------------------------------------
class UniqueImages:
    """Generated scenes (JPEG), never the same bytes twice."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.count = 0
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()

    def next(self) -> bytes:
        with self._lock:
            while True:
                self.count += 1
                data = encode_scene(render_scene(scene_rng(self.seed, self.count), SCENE_PX)[0])
                digest = hashlib.sha256(data).digest()
                if digest not in self._seen:
                    self._seen.add(digest)
                    return data


@dataclass
class Ledger:
    """What each key must be at the end: the ETag of its last PUT, or None once deleted."""

    expected: dict[str, str | None] = field(default_factory=dict)
    touched: dict[str, float] = field(default_factory=dict)  # key -> when its last operation returned
    puts: int = 0
    overwrites: int = 0
    reputs: int = 0
    deletes: int = 0
    retries: int = 0  # S3 calls that failed and were made again
    lock: threading.Lock = field(default_factory=threading.Lock)

    def live(self) -> dict[str, str]:
        with self.lock:
            return {k: v for k, v in self.expected.items() if v is not None}

    def gone(self) -> set[str]:
        with self.lock:
            return {k for k, v in self.expected.items() if v is None}

    def record(self, key: str, etag: str | None, kind: str) -> None:
        """``kind``: put, overwrite, reput or delete."""
        with self.lock:
            self.expected[key] = etag
            self.touched[key] = time.monotonic()
            setattr(self, kind + "s", getattr(self, kind + "s") + 1)


class Ingestion:
    """PUTs and deletes at ``rate`` operations a second in a thread (see the module doc)."""

    def __init__(
        self,
        bucket: emulated_aws.NotifyingBucket,
        *,
        prefix: str = "load/",
        rate: float = 2.0,
        delete_share: float = 0.15,
        overwrite_share: float = 0.1,
        reput_share: float = 0.05,
        key_quiet_s: float = 30.0,
        seed: int = 0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.rate = rate
        self.shares = (delete_share, overwrite_share, reput_share)
        self.key_quiet_s = key_quiet_s
        self.ledger = Ledger()
        self.images = UniqueImages(seed)
        self._rng = np.random.default_rng(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingestion", daemon=True)
        self._new_keys = 0

    def start(self) -> Ingestion:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def put(self, key: str | None = None, kind: str = "put") -> tuple[str, str | None]:
        """PUT a new image at ``key`` (None: a new key), retried until S3 takes it; the key and
        the ETag (None when stopped before S3 took it)."""
        if key is None:
            with self.ledger.lock:
                self._new_keys += 1
                key = f"{self.prefix}{self._new_keys:06d}.jpg"
        body = self.images.next()
        etag = self._until_done(lambda: self.bucket.put(key, body, "image/jpeg"))
        if etag is not None:
            etag = etag.strip('"').lower()
            self.ledger.record(key, etag, kind)
        return key, etag

    def delete(self, key: str) -> None:
        def delete() -> str:
            self.bucket.s3.delete_object(Bucket=self.bucket.name, Key=key)
            return ""

        if self._until_done(delete) is not None:
            self.ledger.record(key, None, "delete")

    def _until_done(self, call: Callable[[], str]) -> str | None:
        """``call()`` until it returns (S3 unreachable: again after a pause); None if stopped first."""
        while True:
            try:
                return call()
            except Exception:  # the project's errors, botocore's, sockets': S3 is not there now
                self.ledger.retries += 1
                if self._stop.wait(0.5):
                    return None

    def _quiet(self, keys: Sequence[str]) -> list[str]:
        now = time.monotonic()
        with self.ledger.lock:
            return [k for k in keys if now - self.ledger.touched.get(k, 0.0) >= self.key_quiet_s]

    def step(self) -> None:
        """One operation: a delete, an overwrite, a re-PUT of a deleted key or a new key."""
        delete_share, overwrite_share, reput_share = self.shares
        roll = float(self._rng.random())
        if roll < delete_share + overwrite_share:
            live = self._quiet(sorted(self.ledger.live()))
            if live:
                key = live[int(self._rng.integers(len(live)))]
                if roll < delete_share:
                    self.delete(key)
                else:
                    self.put(key, "overwrite")
                return
        elif roll < delete_share + overwrite_share + reput_share:
            gone = self._quiet(sorted(self.ledger.gone()))
            if gone:
                self.put(gone[int(self._rng.integers(len(gone)))], "reput")
                return
        self.put()

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.step()
            next_at = max(next_at + interval, time.monotonic() - interval)
            self._stop.wait(max(0.0, next_at - time.monotonic()))


# -- searches ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """One call: when it started and ended (monotonic), its status code name (``OK``...), whether
    the answer was flagged partial, and the code a correct service answers it with."""

    started: float
    ended: float
    code: str
    partial: bool
    expected: str = "OK"

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def _words() -> list[str]:
    """768 different queries of the scene world's words, 3 to 9 words long."""
    return [
        f"{count} {size} {colour} {shape}{'s' if n > 1 else ''}"
        + (f" on {ground}" if ground != "white" else "")
        for n, count in COUNTS.items()
        for size in SIZES
        for colour in COLOURS
        for shape in SHAPES
        for ground in BACKGROUNDS
    ]


def _invalid_requests() -> list[dict[str, Any]]:
    """SearchText requests the gateway must refuse with INVALID_ARGUMENT."""
    return [
        {"text": "", "top_k": 10},  # nothing to search for
        {"text": "x" * 5000, "top_k": 10},  # longer than MEDIASEARCH_GATEWAY_MAX_QUERY_CHARS
        {"text": "a red circle", "top_k": 100_000},  # more than MEDIASEARCH_GATEWAY_MAX_TOP_K
        {"text": "a red circle", "top_k": 10, "page_token": "not-a-token"},
    ]


class SearchLoad:
    """``callers`` threads calling SearchText through the gateways at ``addresses`` (see the module
    doc); ``invalid_share`` of the calls are requests that must be refused; each caller pauses
    ``pause_s`` between calls."""

    def __init__(
        self,
        addresses: str,
        callers: int,
        *,
        invalid_share: float = 0.0,
        pause_s: float = 0.0,
        timeout_s: float = 10.0,
        retries: int = 3,
        top_k: int = 10,
        seed: int = 0,
    ) -> None:
        from mediasearch.client import open_channel

        self.channel = open_channel(addresses, retries=retries)
        self.callers = callers
        self.invalid_share = invalid_share
        self.pause_s = pause_s
        self.timeout_s = timeout_s
        self.top_k = top_k
        self.seed = seed
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._caller, args=(i,), name=f"caller-{i}", daemon=True)
            for i in range(callers)
        ]

    def start(self) -> SearchLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)
        self.channel.close()

    def _caller(self, index: int) -> None:
        from mediasearch._proto.mediasearch.v1 import search_pb2, search_pb2_grpc

        stub = search_pb2_grpc.SearchServiceStub(self.channel)
        rng = np.random.default_rng([self.seed, index])
        words, invalid = _words(), _invalid_requests()
        while not self._stop.is_set():
            if rng.random() < self.invalid_share:
                fields, expected = invalid[int(rng.integers(len(invalid)))], "INVALID_ARGUMENT"
            else:
                fields, expected = {"text": words[int(rng.integers(len(words)))], "top_k": self.top_k}, "OK"
            started = time.monotonic()
            partial = False
            try:
                response = stub.SearchText(search_pb2.SearchTextRequest(**fields), timeout=self.timeout_s)
                code, partial = "OK", bool(response.partial)
            except grpc.RpcError as exc:
                code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            self.outcomes.append(Outcome(started, time.monotonic(), code, partial, expected))
            if self.pause_s:
                self._stop.wait(self.pause_s)


def p99_ms(outcomes: Sequence[Outcome]) -> float:
    """The 99th percentile latency of ``outcomes`` in milliseconds (0 when there are none)."""
    if not outcomes:
        return 0.0
    return float(np.percentile([o.seconds for o in outcomes], 99) * 1000)


class Progress:
    """Calls ``line()`` every ``every_s`` in a thread and hands the text to ``say`` (a progress
    line while a run goes on)."""

    def __init__(self, say: Callable[[str], None], line: Callable[[], str], every_s: float = 10.0) -> None:
        self.say, self.line, self.every_s = say, line, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(Exception):  # a progress line never stops a run
                self.say(self.line())


@dataclass(frozen=True)
class Answer:
    """One SearchText call of a :class:`ModelSearcher`: which model answered, with which ids."""

    sent: float  # on the searcher's clock
    done: float
    model: str | None  # None: the call raised
    ids: tuple[int, ...]
    partial: bool
    error: str | None


class ModelSearcher(threading.Thread):
    """One client searching a gateway in a loop until :meth:`stop`, every answer's model version
    and ids (or its exception) recorded: what a model switch and a rollback are judged by."""

    def __init__(
        self,
        address: str,
        sentences: Sequence[str],
        *,
        pause_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="searcher", daemon=True)
        self.address, self.sentences, self.pause_s, self.clock = address, tuple(sentences), pause_s, clock
        self.answers: list[Answer] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        from mediasearch.client import SearchClient

        with SearchClient(self.address, timeout_s=30) as client:
            turn = 0
            while not self.stopping.is_set():
                sent = self.clock()
                try:
                    r = client.search_text(self.sentences[turn % len(self.sentences)], top_k=10)
                    ids = tuple(x.id for x in r.results)
                    self.answers.append(Answer(sent, self.clock(), r.model_version, ids, r.partial, None))
                except Exception as exc:  # every failure is a finding
                    error = f"{type(exc).__name__}: {exc}"
                    self.answers.append(Answer(sent, self.clock(), None, (), False, error))
                turn += 1
                self.stopping.wait(self.pause_s)

    def stop(self) -> list[Answer]:
        self.stopping.set()
        self.join(timeout=60)
        return list(self.answers)
