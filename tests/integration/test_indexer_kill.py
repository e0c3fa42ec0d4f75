"""kill -9 the SQS indexer at each step of a batch, restart it: every image is searchable exactly
once, nothing acknowledged is lost, and the orphan segments the kills left are garbage-collected."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from mediasearch.dev.emulated_aws import ENV as AWS_ENV
from mediasearch.dev.emulated_aws import NotifyingBucket
from mediasearch.dev.processes import Child, mediasearch_command
from mediasearch.metadata.models import INDEXED
from mediasearch.settings import load_settings
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.compactor import Compactor
from tests.support.index import sessions_for
from tests.support.indexer import bucket_settings, rows, scene_bytes, served_ids, store_of

IMAGES = 48


def indexer_env(bucket: NotifyingBucket, database_url: str, repository: Path, tmp: Path) -> dict[str, str]:
    settings = bucket_settings(bucket) | {
        "database_url": database_url,
        "segment_cache_dir": tmp / "cache",
        "indexer_max_receives": 10,
        "indexer_batch_size": 8,
        "indexer_batch_wait_ms": 50,
        "indexer_commit_max_items": 8,
        "model_repository": repository,
        "num_shards": 2,
    }
    return {**AWS_ENV, **{f"MEDIASEARCH_{k.upper()}": str(v) for k, v in settings.items()}}


def run_indexer(env: dict[str, str], kill_at: str | None, idle_exit_s: float = 8.0) -> list[str]:
    """Run ``mediasearch indexer``; SIGKILL it the first time it logs ``stage=<kill_at>``."""
    child = Child("indexer", mediasearch_command("indexer", "--exit-when-idle", str(idle_exit_s)), env=env)
    seen = child.start().kill_at(None if kill_at is None else f"stage={kill_at} ")
    assert child.wait(timeout_s=120) == (-signal.SIGKILL if kill_at else 0), "".join(seen[-30:])
    return seen


@pytest.mark.usefixtures("aws_env")
def test_indexer_killed_at_every_step_then_restarted_serves_every_image_exactly_once(
    endpoint: str, tmp_path: Path, tiny_repository: Path, postgres_url: str
) -> None:
    name = f"kill-{uuid.uuid4().hex[:8]}"
    bucket = NotifyingBucket.create(endpoint, name, also=(f"{name}-segments",))
    database_url = postgres_url
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
    garbage = Compactor(sessions, store, BuildConfig.defaults(), gc_grace_s=0).collect_garbage()
    assert garbage, "the kill after staging left an orphan segment to collect"
    assert {e.segment_id for e in store.list()} == before - set(garbage)
    assert served_ids(sessions, store, 2) == served  # collecting orphans changed nothing served
