"""kill -9 during compaction at several points, then restart: the index is consistent and complete."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.dev.processes import Child, free_port, mediasearch_command
from mediasearch.metadata.segment_manifest import add_tombstones, load_shard_manifest
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.compactor import Compactor
from mediasearch.vector_index.generation import Generation
from mediasearch.vector_index.segment import read_meta, verify
from mediasearch.vector_index.shard import SearchParams, Shard
from mediasearch.vector_index.store import LocalFolderStore
from tests.support.index import add_segment, brute_force, clustered, publish_generation, sqlite_sessions

CONFIG = BuildConfig.defaults()
N, PARTS = 9000, 6


class Setup(NamedTuple):
    sessions: sessionmaker[Session]
    store: LocalFolderStore
    x: np.ndarray
    ids: np.ndarray
    deleted: np.ndarray
    generation: Generation
    quantizer_id: str


def _setup(tmp: Path) -> Setup:
    """Index generation 1 live (trained on every vector) and its vectors in PARTS segments of shard
    0: merging them places each vector in its list again, as the indexer and the compactor do."""
    sessions = sqlite_sessions(tmp)
    store = LocalFolderStore(tmp / "store")
    x, ids = clustered(N, d=64, seed=7), np.arange(N, dtype=np.int64)
    generation, record = publish_generation(sessions, store, x)
    for part in np.array_split(np.arange(N), PARTS):
        add_segment(sessions, store, x[part], ids[part], generation=generation)
    deleted = ids[::17]
    with sessions.begin() as s:
        add_tombstones(s, deleted, shard=0)
    return Setup(sessions, store, x, ids, deleted, generation, record.quantizer_id)


def _run_and_kill(tmp: Path, store: LocalFolderStore, kill_at: str | float) -> str:
    """Run `mediasearch compact` in a subprocess; SIGKILL it when it logs stage ``kill_at``, or
    ``kill_at`` seconds after the merged segment's build began (its temporary folder appeared):
    mid-build, while the vectors are placed in their lists and the files written, which takes
    0.04-0.06 s here. Returns what it had logged. The generation is live already and the index is
    far below the size that makes a new one due, so the subprocess only compacts."""
    db = f"sqlite:///{tmp / 'meta.db'}"
    argv = mediasearch_command(
        "compact", "--shard", "0", "--min-segments", "2", "--gc-grace", "0", "--database-url", db,
        "--store-url", store.root.as_uri(),
    )  # fmt: skip
    work = tmp / "work"
    work.mkdir()
    child = Child("compactor", argv, env={"TMPDIR": str(work)}).start()
    if isinstance(kill_at, float):
        seen = child.read_until("stage=loaded")
        deadline = time.monotonic() + 30
        while not any(work.glob("segment-*")) and child.running() and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(kill_at)
        child.kill()
    else:
        seen = child.kill_at(f"stage={kill_at}")
    assert child.wait(timeout_s=60) == -signal.SIGKILL, "it finished before the kill: kill it sooner"
    if isinstance(kill_at, float):  # killed inside the build: its temporary folder is left behind
        assert [p.name.startswith("segment-") for p in work.iterdir()] == [True], "not killed mid-build"
    return "".join(seen)


def _served_ids(sessions: sessionmaker[Session], store: LocalFolderStore) -> tuple[np.ndarray, int]:
    """Every id the shard would serve now, checking each live segment's files on the way."""
    with sessions() as s:
        manifest = load_shard_manifest(s, 0)
    parts = []
    for rec in manifest.segments:
        folder = store.open(rec.uri)  # verifies checksums
        verify(folder, read_meta(folder))
        parts.append(np.load(folder / "ids.npy"))
    ids = np.concatenate(parts)
    assert len(np.unique(ids)) == len(ids), "an id is served by two live segments"
    return np.setdiff1d(ids, manifest.tombstones), len(manifest.segments)


@pytest.mark.parametrize("kill_at", ["loaded", "stored", "published", 0.01])
def test_compaction_killed_at_any_point_restarts_into_a_consistent_complete_index(
    tmp_path: Path, kill_at: str | float
) -> None:
    sessions, store, x, ids, deleted, generation, quantizer_id = _setup(tmp_path)
    expected = np.setdiff1d(ids, deleted)
    log = _run_and_kill(tmp_path, store, kill_at)
    assert isinstance(kill_at, float) or f"stage={kill_at}" in log
    served, _ = _served_ids(sessions, store)  # consistent right after the kill
    np.testing.assert_array_equal(served, expected)

    result = Compactor(sessions, store, CONFIG, min_segments=2, gc_grace_s=0).compact(0)  # the restart
    served, live = _served_ids(sessions, store)
    np.testing.assert_array_equal(served, expected)
    assert live == 1
    with sessions() as s:
        manifest = load_shard_manifest(s, 0)
    merged = manifest.segments[0]
    assert sorted(e.segment_id for e in store.list()) == sorted([merged.segment_id, quantizer_id]), (
        "orphans left"
    )
    assert result.new_segment is None or result.new_segment == merged.segment_id
    assert merged.generation == 1 and merged.index_type == generation.factory  # still in the live lists

    shard = Shard(0, store)
    shard.apply(manifest)
    q = clustered(20, d=64, seed=8)
    _, found = shard.search(q, SearchParams.defaults(k=10, nprobe=generation.nlist))  # every list
    np.testing.assert_array_equal(found, brute_force(x, ids, q, 10, excluded=deleted)[1])


def _live(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as s:
        return [r.count for r in load_shard_manifest(s, 0).segments]


def _wait_for(predicate: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_compact_every_merges_segments_as_they_arrive_by_size_tier_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    sessions, store, _, _, deleted, generation, _ = _setup(tmp_path)
    db = f"sqlite:///{tmp_path / 'meta.db'}"
    metrics_port = free_port()
    argv = mediasearch_command(
        "compact", every=0.2, shard=0, min_segments=2, gc_grace=0, database_url=db,
        store_url=store.root.as_uri(), metrics_port=metrics_port,
    )  # fmt: skip
    child = Child("compactor", argv, log_path=tmp_path / "compactor.log").start()
    try:
        _wait_for(lambda: len(_live(sessions)) == 1)  # the six equal segments, merged
        big = _live(sessions)[0]
        assert big == N - len(deleted)
        # the indexer commits two small batches (placed by the live generation): they merge with
        # each other, not into the big one
        more = clustered(600, d=64, seed=8)
        add_segment(sessions, store, more[:300], np.arange(N, N + 300), generation=generation)
        add_segment(sessions, store, more[300:], np.arange(N + 300, N + 600), generation=generation)
        _wait_for(lambda: sorted(_live(sessions)) == [600, big])

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                return str(response.read().decode())

        # the round counts once its commit is done: the manifest can show the merge a moment before
        merged_twice = 'mediasearch_compactor_shard_rounds_total{outcome="merged"} 2.0'
        _wait_for(lambda: merged_twice in scrape(), timeout_s=10)
        metrics = scrape()
        assert "mediasearch_compactor_segments_merged_total 8.0" in metrics, metrics  # six, then two
    finally:
        status = child.stop(timeout_s=30)
    out = (tmp_path / "compactor.log").read_text()
    assert status == 0, out
    assert "compacting shards [0] every 0.2s" in out and "merged 2 segments" in out
    assert "building a new index generation" not in out  # generation 1 serves on: none was due
    with sessions() as s:
        assert {r.generation for r in load_shard_manifest(s, 0).segments} == {1}
    served, live = _served_ids(sessions, store)
    assert live == 2
    np.testing.assert_array_equal(served, np.setdiff1d(np.arange(N + 600), deleted))
