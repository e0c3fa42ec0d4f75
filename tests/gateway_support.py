"""Helpers of the gateway tests: publish image rows and their vectors the way the indexer does
(rows and segments in one transaction), an exported micro model, gateway processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.metadata.models import INDEXED, ImageRow
from mediasearch.metadata.segment_manifest import publish_in
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.partition import HashPartitioner
from mediasearch.vector_index.store import SegmentStore
from mediasearch.vector_index.writer import stage_segment


def publish_images(
    sessions: sessionmaker[Session],
    store: SegmentStore,
    vectors: np.ndarray,
    rows: Sequence[dict[str, Any]],
    *,
    num_shards: int,
    model_version: str,
) -> np.ndarray:
    """Insert one indexed images row per vector and publish the vectors, one segment per shard,
    in one transaction. ``rows`` give bucket, key and any other column. Returns the new ids."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        images = [
            ImageRow(
                **{
                    "etag": f"etag-{i}-{time.time_ns()}",
                    "size": 0,
                    "created": now,
                    "indexed": now,
                    "tags": [],
                    "status": INDEXED,
                    "model_version": model_version,
                    **row,
                }
            )
            for i, row in enumerate(rows)
        ]
        session.add_all(images)
        session.flush()
        ids = np.array([img.id for img in images], dtype=np.int64)
        owner = HashPartitioner(num_shards).shards_for(ids)
        records = []
        for shard in range(num_shards):
            mine = np.flatnonzero(owner == shard)
            for img in (images[i] for i in mine):
                img.shard = shard
            if len(mine):
                records.append(
                    stage_segment(
                        store,
                        vectors[mine],
                        ids[mine],
                        shard=shard,
                        model_version=model_version,
                        config=BuildConfig(),
                    )
                )
        publish_in(session, add=records)
    return ids


def start_process(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "mediasearch.cli", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def wait_port_file(
    proc: subprocess.Popen[bytes], port_file: Path, log_path: Path, timeout: float = 60
) -> list[int]:
    deadline = time.monotonic() + timeout
    while not port_file.exists() or not port_file.read_text().strip():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no port file after {timeout}s: {log_path.read_text()[-3000:]}"
        time.sleep(0.05)
    return [int(p) for p in port_file.read_text().split()]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
