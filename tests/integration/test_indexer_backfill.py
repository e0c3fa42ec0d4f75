"""``mediasearch backfill s3://bucket/prefix`` against moto's S3: indexes what is missing, shows
progress, and resumes after being killed without indexing anything twice."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from mediasearch.dev.emulated_aws import ENV as AWS_ENV
from mediasearch.dev.emulated_aws import NotifyingBucket
from mediasearch.dev.processes import Child, mediasearch_command
from mediasearch.indexer.backfill import Part, backfill
from mediasearch.metadata.models import INDEXED
from tests.support.index import sessions_for
from tests.support.indexer import (
    indexer_settings,
    rows,
    scene_bytes,
    served_ids,
    store_of,
)


@pytest.mark.usefixtures("aws_env")
def test_backfill_killed_midway_resumes_and_later_runs_index_only_new_objects(
    endpoint: str, tmp_path: Path, tiny_repository: Path
) -> None:
    name = f"backfill-{uuid.uuid4().hex[:8]}"
    bucket = NotifyingBucket.create(endpoint, name, notify=False)  # no notifications: objects already there
    for i in range(40):
        bucket.put(f"archive/{i:03d}.jpg", scene_bytes(i))
    bucket.put("elsewhere/skip-me.jpg", scene_bytes(99))
    settings = indexer_settings(tmp_path, tiny_repository, s3_endpoint_url=endpoint)
    env = {
        **os.environ,
        **AWS_ENV,
        "MEDIASEARCH_INDEXER_BATCH_SIZE": "8",
        "MEDIASEARCH_INDEXER_COMMIT_MAX_ITEMS": "8",
    }
    cmd = mediasearch_command(
        "backfill", f"s3://{bucket.name}/archive/", "--s3-endpoint-url", endpoint,
        "--database-url", settings.database_url, "--store-url", settings.segment_store_url,
        "--model-repository", str(tiny_repository),
    )  # fmt: skip

    killed = Child("backfill", [*cmd, "--no-progress"], env=env).start()
    killed.kill_at("stage=committed")
    assert killed.wait(timeout_s=60) == -signal.SIGKILL
    sessions = sessions_for(settings.database_url)
    first = sum(r.status == INDEXED for r in rows(sessions))
    assert 0 < first < 40

    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"indexed {40 - first}, failed 0" in resumed.stdout
    assert f"backfill [####################] {40 - first}/{40 - first} 100%" in resumed.stderr
    assert "ETA" in resumed.stderr and "/s" in resumed.stderr

    for i in range(40, 45):
        bucket.put(f"archive/{i:03d}.jpg", scene_bytes(i))
    report = backfill(settings, f"s3://{bucket.name}/archive/")
    assert (report.indexed, report.skipped, report.failed) == (5, 0, 0)

    indexed = {r.key: r.id for r in rows(sessions) if r.status == INDEXED}
    assert sorted(indexed) == [f"archive/{i:03d}.jpg" for i in range(45)]
    served = served_ids(sessions, store_of(settings), settings.num_shards)
    assert sorted(served) == sorted(indexed.values()) and set(served.values()) == {1}

    # objects deleted while no notification reached the indexer: --prune takes them out
    for i in (3, 17, 44):
        bucket.s3.delete_object(Bucket=bucket.name, Key=f"archive/{i:03d}.jpg")
    bucket.s3.delete_object(Bucket=bucket.name, Key="elsewhere/skip-me.jpg")  # outside the prefix
    assert backfill(settings, f"s3://{bucket.name}/archive/").removed == 0
    pruned = backfill(settings, f"s3://{bucket.name}/archive/", prune=True)
    assert (pruned.removed, pruned.indexed) == (3, 0)  # the 42 still there are not even listed as work
    kept = {r.key: r.id for r in rows(sessions) if r.status == INDEXED}
    assert sorted(kept) == [f"archive/{i:03d}.jpg" for i in range(45) if i not in (3, 17, 44)]
    served = served_ids(sessions, store_of(settings), settings.num_shards)
    assert sorted(served) == sorted(kept.values())


@pytest.mark.usefixtures("aws_env")
def test_backfill_parts_together_index_every_object_once(
    endpoint: str, tmp_path: Path, tiny_repository: Path
) -> None:
    name = f"parts-{uuid.uuid4().hex[:8]}"
    bucket = NotifyingBucket.create(endpoint, name, notify=False)
    for i in range(24):
        bucket.put(f"p/{i:03d}.jpg", scene_bytes(i))
    settings = indexer_settings(tmp_path, tiny_repository, s3_endpoint_url=endpoint)
    reports = [backfill(settings, f"s3://{name}/p/", part=Part(i, 3)) for i in range(3)]
    assert sum(r.indexed for r in reports) == 24 and all(0 < r.indexed < 24 for r in reports)
    indexed = [r.key for r in rows(sessions_for(settings.database_url)) if r.status == INDEXED]
    assert sorted(indexed) == [f"p/{i:03d}.jpg" for i in range(24)]
