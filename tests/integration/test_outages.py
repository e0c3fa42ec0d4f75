"""Outages of what the services depend on, on real processes: PostgreSQL, S3 and SQS.

One stack for the module, every part a real process on free loopback ports: a PostgreSQL server of
the harness's own (:class:`~mediasearch.dev.postgres.LocalPostgres`: it is stopped and started
without touching the machine's shared server), moto's S3 + SQS server (the bucket notifies the
indexer's queue, which dead-letters after 5 receives), two shard servers, the indexer (``mediasearch
indexer``), the compactor and the gateway in cluster mode with API keys required, as in
production. The encoder is the tiny CLIP in ONNX Runtime (Triton's outage is
tests/e2e/test_cluster.py's). The services reach S3 and SQS through one :class:`TcpProxy` each,
so the test can take either endpoint down while the emulator keeps its objects and queues.

The outages are shorter than the 30 s the design holds (docs/operations.md, "Outages of
PostgreSQL, S3/SQS and Triton"), with the indexer's retry delay shortened in proportion (1 s for
15 s): nothing in the behaviour depends on an outage's length but the receives a message spends,
and an 8 s outage at a 1 s retry delay is a two-minute one at the default 15 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from mediasearch._proto.mediasearch.v1 import search_pb2, search_pb2_grpc, shard_pb2, shard_pb2_grpc
from mediasearch.dev.emulated_aws import ENV as AWS_ENV
from mediasearch.dev.emulated_aws import NotifyingBucket, moto_command
from mediasearch.dev.postgres import LocalPostgres, prepare_database
from mediasearch.dev.processes import Child, free_ports, grpc_serving, mediasearch_command, start_gateway
from mediasearch.metadata.api_keys import create_key, revoke_key
from mediasearch.metadata.db import make_engine, migrated_engine, session_factory
from mediasearch.metadata.models import INDEXED
from mediasearch.model_manifest import ModelManifest
from mediasearch.settings import load_settings
from mediasearch.vector_index.store import store_from_settings
from tests.support.indexer import rows, scene_bytes, served_ids
from tests.support.proxy import TcpProxy

T = TypeVar("T")
NUM_SHARDS = 2
PG_OUTAGE_S = 8.0
S3_OUTAGE_S = 5.0
HUNG_S = 6.0  # longer than the indexer's 5 s visibility timeout
DEADLINE_S = 2.0  # the gateway's (MEDIASEARCH_GATEWAY_DEADLINE_S)
KEYS = {"admin": "admin", "doomed": "search"}  # "doomed" is revoked after the database's outage
#: what the tests saw, printed (pytest -s) for docs/operations.md
FIGURES: dict[str, object] = {}


@dataclass
class Stack:
    folder: Path
    pg: LocalPostgres
    database_url: str
    moto: Child
    s3: TcpProxy  # the services' S3 endpoint
    sqs: TcpProxy  # the services' SQS endpoint
    bucket: NotifyingBucket  # the test's own clients, straight to the emulator
    gateway: Child
    gateway_address: str
    shards: list[Child]
    shard_ports: list[int]
    indexer: Child
    compactor: Child
    compactor_metrics: str
    dim: int
    keys: dict[str, str]  # name -> API key
    images: dict[str, bytes] = field(default_factory=dict)  # key -> bytes, all put so far

    @property
    def services(self) -> list[Child]:
        return [self.gateway, *self.shards, self.indexer, self.compactor]

    def put(self, key: str, data: bytes) -> None:
        self.bucket.put(key, data, "image/jpeg")
        self.images[key] = data


def _wait(what: str, check: Callable[[], T], timeout_s: float, step_s: float = 0.1) -> T:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f}s"
        time.sleep(step_s)
    return value


def _call(stack: Stack, method: str, request: Any, key: str = "admin") -> tuple[grpc.StatusCode, Any]:
    """The gateway's answer as a status code and the response (or the error's details)."""
    metadata = (("authorization", f"Bearer {stack.keys.get(key, key)}"),)
    with grpc.insecure_channel(stack.gateway_address) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        try:
            return grpc.StatusCode.OK, getattr(stub, method)(request, timeout=10, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


def _searchable(stack: Stack, key: str) -> bool:
    """The gateway's SearchImage with the object's bytes finds that object first."""
    request = search_pb2.SearchImageRequest(image=stack.images[key], top_k=1)
    code, response = _call(stack, "SearchImage", request)
    return code == grpc.StatusCode.OK and [r.key for r in response.results] == [key]


def _all_searchable(stack: Stack, keys: list[str], timeout_s: float = 60.0) -> float:
    """Wait until every key is searchable; how long it took."""
    started = time.monotonic()
    for key in keys:
        _wait(f"{key} searchable", lambda key=key: _searchable(stack, key), timeout_s)  # type: ignore[misc]
    return time.monotonic() - started


def _shard_ids(stack: Stack, port: int) -> set[int]:
    """Every id a shard server serves (k above the count: flat segments return them all)."""
    query = np.ones(stack.dim, np.float32) / np.sqrt(stack.dim)
    request = shard_pb2.ShardSearchRequest(queries=query.astype("<f4").tobytes(), dim=stack.dim, k=1000)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        (hits,) = shard_pb2_grpc.ShardServiceStub(channel).Search(request, timeout=5).results
    return set(hits.ids)


def _rounds(stack: Stack) -> float:
    """The compactor's rounds so far (every outcome)."""
    with urllib.request.urlopen(stack.compactor_metrics, timeout=5) as response:
        text = response.read().decode()
    name = "mediasearch_compactor_shard_rounds_total"
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def _log(child: Child, since: int = 0) -> str:
    assert child.log_path is not None
    return child.log_path.read_text(errors="replace")[since:]


def _waits(text: str, pattern: str) -> list[float]:
    return [float(w) for w in re.findall(pattern, text)]


def _put_all(stack: Stack, prefix: str, first: int, count: int = 4) -> list[str]:
    keys = [f"{prefix}/{i}.jpg" for i in range(count)]
    for i, key in enumerate(keys):
        stack.put(key, scene_bytes(first + i))
    return keys


def _exactly_once(stack: Stack) -> None:
    """Every key put has one INDEXED row whose id one live segment serves, nothing else is
    served, and the queue and the dead-letter queue are empty."""
    engine = make_engine(stack.database_url)
    try:
        sessions = session_factory(engine)
        indexed = [r for r in rows(sessions) if r.status == INDEXED]
        assert Counter(r.key for r in indexed) == Counter(list(stack.images))
        settings = load_settings(
            segment_store_url=f"s3://{stack.bucket.name}-segments/index",
            s3_endpoint_url=stack.bucket.endpoint,
            segment_cache_dir=stack.folder / "test-cache",
        )
        served = served_ids(sessions, store_from_settings(settings, "test"), NUM_SHARDS)
        assert set(served) == {r.id for r in indexed} and set(served.values()) == {1}, served
    finally:
        engine.dispose()
    assert stack.bucket.messages() == 0 and stack.bucket.messages(stack.bucket.dlq_url) == 0


def _service_env(stack_folder: Path, repository: Path, database_url: str, bucket: NotifyingBucket,
                 s3: TcpProxy, sqs: TcpProxy, shard_ports: list[int]) -> dict[str, str]:  # fmt: skip
    moto = bucket.endpoint.rsplit(":", 1)[1]
    settings = {
        "DATABASE_URL": database_url,
        "MODEL_REPOSITORY": str(repository),
        "ENCODER": "local",
        "ENCODER_ORT_THREADS": "1",
        "NUM_SHARDS": str(NUM_SHARDS),
        "SEGMENT_STORE_URL": f"s3://{bucket.name}-segments/index",
        "SEGMENT_CACHE_DIR": str(stack_folder / "cache"),
        "S3_ENDPOINT_URL": s3.endpoint,
        "SQS_ENDPOINT_URL": sqs.endpoint,
        "INDEXER_QUEUE_URL": bucket.queue_url.replace(f":{moto}/", f":{sqs.port}/"),
        "INDEXER_DLQ_URL": bucket.dlq_url.replace(f":{moto}/", f":{sqs.port}/"),
        "INDEXER_WAIT_TIME_S": "1",
        "INDEXER_VISIBILITY_TIMEOUT_S": "5",
        "INDEXER_RETRY_DELAY_S": "1",
        "INDEXER_BATCH_WAIT_MS": "20",
        "INDEXER_STOP_GRACE_S": "2",
        "SHARD_POLL_INTERVAL_S": "0.5",
        "SHARD_WORKERS": "2",
        "SHARD_ADDRESSES": json.dumps([f"127.0.0.1:{p}" for p in shard_ports]),
        "ROUTER_ALLOW_PARTIAL": "true",
        "GATEWAY_TOKEN_SECRET": secrets.token_urlsafe(32),
        "GATEWAY_PRESIGN_URLS": "true",
        "GATEWAY_AUTH": "required",
        "GATEWAY_DEADLINE_S": str(DEADLINE_S),
        "GATEWAY_KEYS_REFRESH_S": "0.5",
        "SHUTDOWN_DELAY_S": "0",
        "SHUTDOWN_GRACE_S": "1",
    }
    return {**AWS_ENV, **{f"MEDIASEARCH_{k}": v for k, v in settings.items()}}


def _stop_together(children: list[Child]) -> None:
    with ThreadPoolExecutor(max(1, len(children))) as pool:
        list(pool.map(lambda child: child.stop(10), children))


@pytest.fixture(scope="module")
def stack(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("outages")
    moto_port, compactor_metrics, *shard_ports = free_ports(2 + NUM_SHARDS)
    with contextlib.ExitStack() as cleanup:
        pg = cleanup.enter_context(LocalPostgres(log_path=folder / "postgres.log"))
        moto = Child("moto", moto_command(moto_port), log_path=folder / "moto.log").start()
        cleanup.callback(moto.stop)
        moto.wait_http(f"http://127.0.0.1:{moto_port}/moto-api/", timeout_s=30)
        s3, sqs = TcpProxy(moto_port).start(), TcpProxy(moto_port).start()
        cleanup.callback(s3.cut)
        cleanup.callback(sqs.cut)
        name = f"photos-{uuid.uuid4().hex[:6]}"
        bucket = NotifyingBucket.create(
            f"http://127.0.0.1:{moto_port}", name, max_receives=5, also=(f"{name}-segments",)
        )
        database_url = pg.url("outages")
        prepare_database(database_url)
        with migrated_engine(database_url) as engine, session_factory(engine).begin() as session:
            keys = {key: create_key(session, key, [scope]) for key, scope in KEYS.items()}
        env = _service_env(folder, tiny_repository, database_url, bucket, s3, sqs, shard_ports)

        services: list[Child] = []
        cleanup.callback(_stop_together, services)

        def spawn(name: str, *args: str, **options: object) -> Child:
            argv = mediasearch_command(*args, **options)
            services.append(Child(name, argv, env=env, log_path=folder / f"{name}.log").start())
            return services[-1]

        shards = [spawn(f"shard-{i}", "shard-server", shard=i, port=p) for i, p in enumerate(shard_ports)]
        indexer = spawn("indexer", "indexer")
        compactor = spawn("compactor", "compact", every=1, metrics_port=compactor_metrics)
        gateway, port, _ = start_gateway("gateway", env, folder)
        services.append(gateway)
        for child, shard_port in zip(shards, shard_ports, strict=True):
            child.wait_serving(shard_port, timeout_s=60)
        stack = Stack(
            folder, pg, database_url, moto, s3, sqs, bucket, gateway, f"127.0.0.1:{port}", shards,
            shard_ports, indexer, compactor, f"http://127.0.0.1:{compactor_metrics}/metrics",
            ModelManifest.load(tiny_repository).embedding_dim, keys,
        )  # fmt: skip
        _all_searchable(stack, _put_all(stack, "before", 0))
        yield stack


def test_postgresql_down_searches_fail_unavailable_uploads_wait_and_everything_recovers_without_restarts(
    stack: Stack, aws_env: None
) -> None:
    """PostgreSQL stopped (a fast shutdown: its sessions are ended) and started on its port again.

    While it is down the shard servers keep serving what they loaded (and stay SERVING); the
    gateway, which joins every page with the image rows, answers UNAVAILABLE naming the metadata
    database (not INTERNAL, not UNKNOWN), and so does a key it cannot check; the indexer receives
    what is put meanwhile, acknowledges none of it and backs off. Once the database is back,
    every service carries on by itself (the same processes): searches are answered, the gateway's
    key refresh applies a revocation, the compactor runs rounds, and every image put during the
    outage is searchable exactly once, none dead-lettered."""
    pids = [c.pid for c in stack.services]
    served = {port: _shard_ids(stack, port) for port in stack.shard_ports}
    assert all(served.values())
    log_at, shard_logs_at = len(_log(stack.indexer)), [len(_log(shard)) for shard in stack.shards]
    down_at = time.monotonic()
    stack.pg.stop()
    during = _put_all(stack, "during-pg", 20)
    codes: Counter[str] = Counter()
    details: set[str] = set()
    calls = (
        ("SearchImage", search_pb2.SearchImageRequest(image=stack.images["before/0.jpg"], top_k=3)),
        ("GetImage", search_pb2.GetImageRequest(id=1)),
    )
    while time.monotonic() - down_at < PG_OUTAGE_S:
        for port, ids in served.items():
            assert _shard_ids(stack, port) == ids and grpc_serving(f"127.0.0.1:{port}")
        for method, request in calls:
            for key in ("admin", "doomed", "ms_not-a-key"):
                code, detail = _call(stack, method, request, key)
                codes[f"{method} {code.name}"] += 1
                details.add(str(detail))
        assert grpc_serving(stack.gateway_address)
        time.sleep(0.5)
    assert set(codes) == {"SearchImage UNAVAILABLE", "GetImage UNAVAILABLE"}, codes
    assert all(re.search(r"metadata database .* (unreachable|unavailable)", d) for d in details), details
    assert stack.bucket.messages() == len(during)  # received or not, none was acknowledged
    pauses = _waits(_log(stack.indexer, log_at), r"could be processed; waiting (\d+)s")
    assert len(pauses) >= 2 and pauses == sorted(pauses), pauses  # it backs off, exponentially
    rounds = _rounds(stack)
    stack.pg.start()
    up_at = time.monotonic()

    _wait("the gateway answering", lambda: _searchable(stack, "before/0.jpg"), 30)
    gateway_back = time.monotonic() - up_at
    engine = make_engine(stack.database_url)
    with session_factory(engine).begin() as session:
        revoke_key(session, "doomed")
    engine.dispose()
    request = search_pb2.GetImageRequest(id=1)
    refused = lambda: _call(stack, "GetImage", request, "doomed")[0] == grpc.StatusCode.UNAUTHENTICATED  # noqa: E731
    _wait("the revoked key refused (the key refresh outlived the outage)", refused, 10)
    indexed_back = _all_searchable(stack, during) + gateway_back
    _wait("a compaction round after the outage", lambda: _rounds(stack) > rounds, 30)
    assert [c.pid for c in stack.services] == pids and all(c.running() for c in stack.services)
    for shard, at in zip(stack.shards, shard_logs_at, strict=True):  # an outage is two lines, not a flood
        said = _log(shard, at)
        assert said.count("manifest sync failed") == 1 and said.count("manifest sync works again") == 1
    _exactly_once(stack)
    FIGURES.update(
        pg_outage_s=round(up_at - down_at, 1),
        pg_codes=dict(codes),
        pg_details=sorted(details),
        pg_indexer_pauses_s=pauses,
        pg_gateway_back_s=round(gateway_back, 2),
        pg_indexed_back_s=round(indexed_back, 2),
    )
    print("\nPostgreSQL outage:", json.dumps(FIGURES, indent=1))


def test_s3_or_sqs_down_or_hung_the_indexer_backs_off_and_indexes_everything_exactly_once(
    stack: Stack, aws_env: None
) -> None:
    """S3 and SQS fail the ways clients meet: down, each on its own, then both hung.

    Down: an endpoint refuses connections and resets the open ones (its proxy is cut: what a lost
    load balancer or a network partition looks like; a killed and restarted emulator would also
    lose the objects and the queue, which S3 and SQS never do). With S3 down the indexer receives
    the events, cannot fetch the objects, returns the messages (each later at every receive) and
    pauses receiving, longer each time; with SQS down it retries receiving, longer each time.
    Hung: moto is paused (SIGSTOP), so every call hangs without an error, the visibility heartbeats
    too: the messages held outlive their visibility timeout and are delivered again after SIGCONT.
    Either way nothing is acknowledged before it is committed, and everything is indexed exactly
    once, nothing dead-lettered."""
    pids = [c.pid for c in stack.services]
    figures: dict[str, object] = {}
    for which, proxy, pattern in (
        ("s3", stack.s3, r"could be processed; waiting (\d+)s"),
        ("sqs", stack.sqs, r"receiving failed, retrying in (\d+)s"),
    ):
        log_at = len(_log(stack.indexer))
        proxy.cut()
        down_at = time.monotonic()
        during = _put_all(stack, f"during-{which}", 40 if which == "s3" else 50)
        time.sleep(S3_OUTAGE_S)
        assert stack.bucket.messages() == len(during)  # none acknowledged
        waits = _waits(_log(stack.indexer, log_at), pattern)
        assert len(waits) >= 2 and waits == sorted(waits) and waits[-1] > waits[0], (which, waits)
        proxy.restore()
        figures[f"{which}_down_s"] = round(time.monotonic() - down_at, 1)
        figures[f"{which}_indexer_waits_s"] = waits
        figures[f"{which}_indexed_back_s"] = round(_all_searchable(stack, during), 2)

    hung = _put_all(stack, "hung", 60)
    assert stack.moto.pid is not None
    os.kill(stack.moto.pid, signal.SIGSTOP)
    try:
        time.sleep(HUNG_S)
    finally:
        os.kill(stack.moto.pid, signal.SIGCONT)
    figures["hung_indexed_back_s"] = round(_all_searchable(stack, hung), 2)
    _wait("the queue empty", lambda: stack.bucket.messages() == 0, 30)
    assert [c.pid for c in stack.services] == pids and all(c.running() for c in stack.services)
    _exactly_once(stack)
    FIGURES.update(figures)
    print("\nS3/SQS outages:", json.dumps(figures, indent=1))


def test_postgresql_hung_searches_end_at_their_deadline_and_everything_resumes_after_it(
    stack: Stack, aws_env: None
) -> None:
    """PostgreSQL paused (SIGSTOP, backends included): connections are accepted or held open and
    nothing answers, as behind a network partition. A search waits for its metadata no longer
    than the gateway's deadline (DEADLINE_EXCEEDED, naming the stage), the shard servers keep
    serving; once it resumes, searches are answered and what was put meanwhile is indexed once."""
    during = _put_all(stack, "hung-pg", 80)
    request = search_pb2.SearchImageRequest(image=stack.images["before/0.jpg"], top_k=3)
    answers: list[tuple[str, float, str]] = []
    stack.pg.pause()
    try:
        started = time.monotonic()
        while time.monotonic() - started < 2 * DEADLINE_S:
            asked = time.monotonic()
            code, detail = _call(stack, "SearchImage", request)
            answers.append((code.name, time.monotonic() - asked, str(detail)))
            assert all(_shard_ids(stack, port) for port in stack.shard_ports)
    finally:
        stack.pg.resume()
    resumed_at = time.monotonic()
    assert {code for code, _, _ in answers} == {"DEADLINE_EXCEEDED"}, answers
    assert all(took < DEADLINE_S + 1 and "metadata stage" in detail for _, took, detail in answers), answers
    _wait("the gateway answering", lambda: _searchable(stack, "before/0.jpg"), 30)
    gateway_back = time.monotonic() - resumed_at
    _all_searchable(stack, during)
    figures = {
        "hung_pg_answers": [(code, round(took, 2)) for code, took, _ in answers],
        "hung_pg_gateway_back_s": round(gateway_back, 2),
        "hung_pg_indexed_back_s": round(time.monotonic() - resumed_at, 2),
    }
    _exactly_once(stack)
    FIGURES.update(figures)
    print("\nPostgreSQL hung:", json.dumps(figures, indent=1))
