"""kill -9 the SQS indexer at each step of a batch, restart it: every image is searchable exactly
once, nothing acknowledged is lost, and the orphan segments the kills left are garbage-collected."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from index_support import postgres_available, postgres_database
from indexer_support import AWS_ENV, Bucket, rows, scene_bytes, served_ids, sessions_for, store_of

from mediasearch.metadata.models import INDEXED
from mediasearch.settings import load_settings
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.compactor import Compactor

IMAGES = 48


def indexer_env(bucket: Bucket, database_url: str, repository: Path, tmp: Path) -> dict[str, str]:
    settings = {
        "DATABASE_URL": database_url,
        "SEGMENT_STORE_URL": f"s3://{bucket.name}-segments/index",
        "SEGMENT_CACHE_DIR": str(tmp / "cache"),
        "S3_ENDPOINT_URL": bucket.endpoint,
        "INDEXER_QUEUE_URL": bucket.queue_url,
        "INDEXER_DLQ_URL": bucket.dlq_url,
        "INDEXER_WAIT_TIME_S": "1",
        "INDEXER_VISIBILITY_TIMEOUT_S": "5",
        "INDEXER_RETRY_DELAY_S": "0",
        "INDEXER_MAX_RECEIVES": "10",
        "INDEXER_BATCH_SIZE": "8",
        "INDEXER_BATCH_WAIT_MS": "50",
        "INDEXER_COMMIT_MAX_ITEMS": "8",
        "MODEL_REPOSITORY": str(repository),
        "NUM_SHARDS": "2",
    }
    return {**os.environ, **AWS_ENV, **{f"MEDIASEARCH_{k}": v for k, v in settings.items()}}


def run_indexer(env: dict[str, str], kill_at: str | None, idle_exit_s: float = 8.0) -> list[str]:
    """Run ``mediasearch indexer``; SIGKILL it the first time it logs ``stage=<kill_at>``."""
    cmd = [sys.executable, "-m", "mediasearch.cli", "indexer", "--exit-when-idle", str(idle_exit_s)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if kill_at is not None and f"stage={kill_at} " in line:
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=120) == (-signal.SIGKILL if kill_at else 0), "".join(seen[-30:])
    return seen


def test_indexer_killed_at_every_step_then_restarted_serves_every_image_exactly_once(
    endpoint: str, tmp_path: Path, tiny_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432 (.ci/run starts it)")
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    bucket = Bucket(endpoint, f"kill-{uuid.uuid4().hex[:8]}")
    bucket.notify()
    with postgres_database() as database_url:
        env = indexer_env(bucket, database_url, tiny_repository, tmp_path)
        keys = [f"img/{i:03d}.jpg" for i in range(IMAGES)]
        for i, key in enumerate(keys):
            bucket.put(key, scene_bytes(i))
        bucket.put(keys[0], scene_bytes(999))  # one overwrite in the mix

        for step in ("reserved", "staged", "committed", "acked"):
            run_indexer(env, kill_at=step)
        time.sleep(5)  # the killed runs' messages become visible again
        run_indexer(env, kill_at=None)

        sessions = sessions_for(database_url)
        store_url = env["MEDIASEARCH_SEGMENT_STORE_URL"]
        settings = load_settings(
            segment_store_url=store_url, s3_endpoint_url=endpoint, segment_cache_dir=tmp_path / "cache"
        )
        store = store_of(settings)
        indexed = {r.key: r.id for r in rows(sessions) if r.status == INDEXED}
        assert sorted(indexed) == keys
        assert all(r.status != "pending" for r in rows(sessions))
        served = served_ids(sessions, store, 2)
        assert sorted(served) == sorted(indexed.values()) and set(served.values()) == {1}
        assert bucket.messages(bucket.queue_url) == 0 and bucket.messages(bucket.dlq_url) == 0

        before = {e.segment_id for e in store.list()}
        garbage = Compactor(sessions, store, BuildConfig(), gc_grace_s=0).collect_garbage()
        assert garbage, "the kill after staging left an orphan segment to collect"
        assert {e.segment_id for e in store.list()} == before - set(garbage)
        assert served_ids(sessions, store, 2) == served  # collecting orphans changed nothing served
