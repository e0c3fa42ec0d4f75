"""A generation switch under search traffic: real shard-server processes following a PostgreSQL
manifest, a gRPC router routing by a GenerationFollower; and the generations lock that orders a
switch and an indexer's publish on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from mediasearch._proto.mediasearch.v1 import shard_pb2, shard_pb2_grpc
from mediasearch.dev.processes import Child, free_ports, mediasearch_command, stop_all
from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.metadata.segment_manifest import (
    SegmentRecord,
    add_tombstones,
    live_generation,
    load_shard_manifest,
    publish_in,
)
from mediasearch.vector_index import rebalance
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.follower import GenerationFollower, ManifestFollower
from mediasearch.vector_index.generation import Generation, GenerationRecord, load_generation
from mediasearch.vector_index.partition import HashPartitioner
from mediasearch.vector_index.rebalance import Rebalancer
from mediasearch.vector_index.router import GrpcRouter
from mediasearch.vector_index.segment import load_vectors
from mediasearch.vector_index.shard import SearchParams, Shard
from mediasearch.vector_index.store import LocalFolderStore
from mediasearch.vector_index.writer import stage_segment
from tests.support.index import MODEL, add_segment, brute_force, clustered, recall

CONFIG = BuildConfig.defaults(encoding="SQ8")
DIM, SHARDS = 32, 3
PARAMS = SearchParams(k=10, nprobe=8, ef_search=16)


@dataclass
class _Db:
    engine: Engine
    sessions: sessionmaker[Session]
    store: LocalFolderStore
    url: str


@pytest.fixture
def db(postgres_url: str, tmp_path: Path) -> Iterator[_Db]:
    engine = make_engine(postgres_url)
    migrate(engine)
    yield _Db(engine, session_factory(engine), LocalFolderStore(tmp_path / "store"), postgres_url)
    engine.dispose()


def _data(n: int, seed: int = 1) -> np.ndarray:
    return clustered(n, DIM, clusters=50, spread=0.15, seed=seed)


def _publish_hashed(db: _Db, x: np.ndarray, ids: np.ndarray) -> None:
    owner = HashPartitioner(SHARDS).shards_for(ids)
    for s in range(SHARDS):
        add_segment(db.sessions, db.store, x[owner == s], ids[owner == s], shard=s, config=CONFIG)


def _live(db: _Db) -> tuple[GenerationRecord, Generation]:
    with db.sessions() as session:
        record = live_generation(session)
    assert record is not None
    return record, load_generation(db.store, record)


def _stage_placed(db: _Db, generation: Generation, x: np.ndarray, ids: np.ndarray) -> list[SegmentRecord]:
    """Segments placed by ``generation`` (the indexer's step 2 under a live generation)."""
    lists = generation.assign(x)
    owner = generation.owners[lists]
    return [
        stage_segment(
            db.store,
            x[owner == s],
            ids[owner == s],
            shard=s,
            model_version=MODEL,
            config=CONFIG,
            generation=generation,
            lists=lists[owner == s],
        )
        for s in np.unique(owner).tolist()
    ]


def _indexer_publish(db: _Db, x: np.ndarray, ids: np.ndarray) -> int:
    """The indexer's steps 2-3: place by the live generation, publish under its lock (FOR SHARE),
    restage when another generation went live meanwhile. Returns the generation that placed them."""
    while True:
        staged_by, generation = _live(db)
        records = _stage_placed(db, generation, x, ids)
        with db.sessions.begin() as session:
            current = live_generation(session, lock=True)
            if current is not None and current.number == staged_by.number:
                publish_in(session, add=records)
                return current.number


def _waiting_on_generations(db: _Db) -> bool:
    """Whether some transaction waits for a lock on index_generations (pg_locks)."""
    with db.engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'relation' "
                    "AND relation = 'index_generations'::regclass"
                )
            ).scalar()
        )


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s:.0f}s"
        time.sleep(0.02)


# -- shard servers -----------------------------------------------------------------------------
def _shard_stats(address: str) -> Any:
    with grpc.insecure_channel(address) as channel:
        return shard_pb2_grpc.ShardServiceStub(channel).Stats(shard_pb2.ShardStatsRequest(), timeout=2)


@contextlib.contextmanager
def _shard_servers(db: _Db, tmp: Path) -> Iterator[list[str]]:
    ports = free_ports(SHARDS)
    children = [
        Child(
            f"shard-{s}",
            mediasearch_command(
                "shard-server",
                shard=s,
                port=port,
                database_url=db.url,
                store_url=db.store.root.as_uri(),
                cache_dir=tmp / "cache",
                poll_interval=0.3,
                workers=4,
            ),
            log_path=tmp / f"shard-{s}.log",
        ).start()
        for s, port in enumerate(ports)
    ]
    try:
        for child, port in zip(children, ports, strict=True):
            child.wait_serving(port, timeout_s=60)
        yield [f"127.0.0.1:{port}" for port in ports]
    finally:
        stop_all(children, timeout_s=10)


@dataclass
class _Traffic:
    """Searches from several tasks at once, recorded with the time each finished."""

    router: GrpcRouter
    queries: np.ndarray
    tasks: int = 4
    stop: threading.Event = field(default_factory=threading.Event)
    results: list[tuple[float, np.ndarray]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def run(self) -> None:
        asyncio.run(self._all())

    async def _all(self) -> None:
        try:
            await asyncio.gather(*(self._one(seed) for seed in range(self.tasks)))
        finally:
            await self.router.close()

    async def _one(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self.stop.is_set():
            rows = rng.choice(len(self.queries), int(rng.integers(1, 4)), replace=False)
            try:
                result = await self.router.search(self.queries[rows], PARAMS, deadline_s=5.0)
            except Exception as exc:  # the test counts every failure
                self.errors.append(exc)
                continue
            self.results.append((time.monotonic(), result.ids))
            await asyncio.sleep(0.002)


def _repeats(results: list[np.ndarray]) -> int:
    """How many result rows hold some id more than once."""
    return sum(len(set(row[row >= 0].tolist())) < int((row >= 0).sum()) for found in results for row in found)


def test_searches_keep_answering_while_the_index_switches_to_a_grown_generation(
    db: _Db, tmp_path: Path
) -> None:
    pool = _data(8100)
    x, test_queries = pool[:8000], pool[8000:]
    ids = np.arange(8000, dtype=np.int64) + 1
    first, grown = slice(0, 2000), slice(2000, 8000)
    _publish_hashed(db, x[first], ids[first])
    rebalancer = Rebalancer(db.sessions, db.store, CONFIG, SHARDS, min_vectors=1000)
    assert rebalancer.run("first").generation == 1
    _, one = _live(db)
    deleted = ids[first][::100]
    with db.sessions.begin() as session:  # deletes go to the shard that holds the id
        for i in deleted.tolist():
            add_tombstones(session, [i], shard=int(one.owners[one.assign(x[i - 1 : i])[0]]))
    queries = np.concatenate([x[deleted - 1], x[::40], test_queries])
    with _shard_servers(db, tmp_path) as addresses:
        assert {_shard_stats(a).index_generation for a in addresses} == {1}
        follower = GenerationFollower(db.sessions, db.store, interval=0.2)
        follower.sync_once()
        follower.start()
        traffic = _Traffic(GrpcRouter([[a] for a in addresses], generations=follower.current), queries)
        searcher = threading.Thread(target=traffic.run, name="traffic")
        searcher.start()
        try:
            assert _indexer_publish(db, x[grown], ids[grown]) == 1
            reason = rebalancer.due()
            assert reason is not None and reason.startswith("grown 4.0x"), reason
            started = time.monotonic()
            result = rebalancer.run(reason)
            switched = time.monotonic()
            assert (result.generation, result.vectors) == (2, 8000 - len(deleted))
            _wait(lambda: {_shard_stats(a).index_generation for a in addresses} == {2}, "on generation 2")
            _wait(lambda: (follower.current() or one).number == 2, "routing by generation 2")
            settled = time.monotonic() + 0.1  # searches in flight now may have met a shard before it switched
            time.sleep(0.6)  # searches on the new generation
        finally:
            traffic.stop.set()
            searcher.join(timeout=30)
            follower.stop()
        assert traffic.errors == []
        before = [found for t, found in traffic.results if t < started]
        during = [found for t, found in traffic.results if started <= t <= switched]
        after = [found for t, found in traffic.results if t > settled]
        assert min(len(before), len(during), len(after)) > 10, (len(before), len(during), len(after))
        for _, found in traffic.results:
            served = found[found >= 0]
            assert np.isin(served, ids).all() and not np.isin(served, deleted).any()
        # never an id twice in one answer, even while shards serve different generations (the
        # router's merge keeps one copy; see
        # test_a_router_never_returns_an_id_twice_while_shards_serve_different_generations)
        assert _repeats([found for _, found in traffic.results]) == 0
        # after the switch: generation 2 everywhere, nprobe lists a query, recall back at the target
        _, two = _live(db)
        assert two.nlist > one.nlist  # grown 4x: more lists
        stats = [_shard_stats(a) for a in addresses]
        assert {s.index_generation for s in stats} == {2}
        assert sum(s.vectors for s in stats) == 8000 - len(deleted)
        router = GrpcRouter([[a] for a in addresses], generations=lambda: two)

        async def final() -> tuple[np.ndarray, np.ndarray]:
            try:
                answer = await router.search(test_queries, PARAMS, deadline_s=5.0)
                return answer.scores, answer.ids
            finally:
                await router.close()

        scores, found = asyncio.run(final())
        assert router.counters.lists_scanned == len(test_queries) * PARAMS.nprobe
        exact = np.einsum("qkd,qd->qk", x[found - 1], test_queries)
        np.testing.assert_allclose(scores, exact, atol=1e-5)  # re-ranked by the servers
        truth = brute_force(x, ids, test_queries, PARAMS.k, excluded=deleted)[1]
        assert recall(found, truth) >= 0.95


# -- the generations lock ----------------------------------------------------------------------
def _held_lock(monkeypatch: pytest.MonkeyPatch, then: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Wrap the switch's ``lock_generations``: ``then`` runs once it holds the lock (inside the
    switch's transaction); returns when it got the lock."""
    real = rebalance.lock_generations
    times: dict[str, float] = {}

    def wrapped(session: Session) -> None:
        real(session)
        times["held"] = time.monotonic()
        then()

    monkeypatch.setattr(rebalance, "lock_generations", wrapped)
    return times


def test_an_indexer_publish_waits_while_a_switch_holds_the_generations_lock_then_sees_it(
    db: _Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _data(2200, seed=3)
    ids = np.arange(2200, dtype=np.int64) + 1
    _publish_hashed(db, x[:2000], ids[:2000])
    locked, publisher_waits = threading.Event(), threading.Event()

    def hold() -> None:  # inside the switch: hold the lock until the publisher is seen waiting
        locked.set()
        _wait(lambda: _waiting_on_generations(db), "a publisher waiting for the lock")
        publisher_waits.set()
        time.sleep(0.2)

    times = _held_lock(monkeypatch, then=hold)
    outcome: dict[str, Any] = {}
    switch = threading.Thread(
        target=lambda: outcome.update(
            result=Rebalancer(db.sessions, db.store, CONFIG, SHARDS, min_vectors=1000).run()
        )
    )
    switch.start()
    try:
        assert locked.wait(30)
        with db.sessions() as session:  # a plain read goes on while the switch holds the lock
            started = time.monotonic()
            assert live_generation(session) is None
            assert time.monotonic() - started < 5.0 and not publisher_waits.is_set()
        with db.sessions.begin() as session:  # the indexer's publish transaction
            current = live_generation(session, lock=True)
            answered = time.monotonic()
    finally:
        switch.join(timeout=60)
    assert publisher_waits.is_set() and answered > times["held"] + 0.2
    assert outcome["result"].generation == 1
    assert current is not None and current.number == 1  # it sees the switch's generation: restages
    assert _indexer_publish(db, x[2000:], ids[2000:]) == 1


def test_a_switch_waits_for_an_indexer_publish_in_flight_and_places_its_vectors(
    db: _Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _data(2600, seed=4)
    ids = np.arange(2600, dtype=np.int64) + 1
    _publish_hashed(db, x[:2000], ids[:2000])
    rebalancer = Rebalancer(db.sessions, db.store, CONFIG, SHARDS, min_vectors=1000)
    rebalancer.run("first")
    record, one = _live(db)
    times = _held_lock(monkeypatch)
    outcome: dict[str, Any] = {}
    switch = threading.Thread(target=lambda: outcome.update(result=rebalancer.run("second")))
    records = _stage_placed(db, one, x[2000:], ids[2000:])
    try:
        with db.sessions.begin() as session:  # the indexer's publish, in flight across the snapshot
            assert live_generation(session, lock=True) == record
            publish_in(session, add=records)
            switch.start()
            _wait(lambda: _waiting_on_generations(db), "the switch waiting for the lock", timeout_s=60)
            committed = time.monotonic()
    finally:
        switch.join(timeout=60)
    result = outcome["result"]
    assert times["held"] >= committed  # it waited for the publish to commit
    assert (result.generation, result.caught_up, result.vectors) == (2, 600, 2600)
    _, two = _live(db)
    served: set[int] = set()
    for s in range(SHARDS):
        with db.sessions() as session:
            manifest = load_shard_manifest(session, s)
        assert {seg.generation for seg in manifest.segments} == {2}
        for seg in manifest.segments:
            held, _ = load_vectors(db.store.open(seg.uri))
            assert (two.owners[two.assign(x[held - 1])] == s).all()
            served.update(held.tolist())
    assert served == set(ids.tolist())


def test_a_shard_following_the_manifest_during_a_switch_serves_one_generation(db: _Db) -> None:
    """A shard server reads its manifest in several statements; on PostgreSQL (read committed) a
    switch that commits between them must not leave it with the old segments beside the new
    tombstones and the new quantizer (a deleted id served again; lists of one generation scanned
    in segments of another)."""
    x = _data(2000, seed=5)
    ids = np.arange(2000, dtype=np.int64) + 1
    _publish_hashed(db, x, ids)
    rebalancer = Rebalancer(db.sessions, db.store, CONFIG, SHARDS, min_vectors=1000)
    rebalancer.run("first")
    _, one = _live(db)
    victim = int(ids[7])
    holder = int(one.owners[one.assign(x[7:8])[0]])
    with db.sessions.begin() as session:
        add_tombstones(session, [victim], shard=holder)
    reader = make_engine(db.url)  # the shard server's connection
    paused, switched = threading.Event(), threading.Event()

    def pause_after_the_segments(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM tombstones" in statement and not paused.is_set():
            paused.set()  # the live segments are read, the tombstones not yet
            switched.wait(60)

    event.listen(reader, "before_cursor_execute", pause_after_the_segments)
    shard = Shard(holder, db.store)
    follower = ManifestFollower(shard, session_factory(reader), listen=False)
    thread = threading.Thread(target=follower.sync_once)
    thread.start()
    try:
        assert paused.wait(30)
        assert rebalancer.run("second").generation == 2
    finally:
        switched.set()
        thread.join(timeout=30)
        reader.dispose()
    view = shard.view
    assert view.quantizer is not None and view.segments
    assert {s.record.generation for s in view.segments} == {view.quantizer.number}
    served = np.concatenate([s.ids for s in view.segments if s.ids is not None])
    assert victim not in set(served[~np.isin(served, view.tombstones)].tolist())
