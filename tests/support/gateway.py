"""Helpers of the gateway tests: publish image rows and their vectors the way the indexer does
(rows and segments in one transaction)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
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
                        config=BuildConfig.defaults(),
                    )
                )
        publish_in(session, add=records)
    return ids
