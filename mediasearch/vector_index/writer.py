"""Stage a segment for publishing: build it, upload it, return its manifest record.

Staging and publishing are separate on purpose: the indexer stages one segment per shard, then
publishes the image rows and every segment record in ONE transaction
(``segment_manifest.publish_in(session, records)``). A crash in between leaves only unreferenced
files, which the compactor's garbage collection removes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mediasearch.metadata.segment_manifest import SegmentRecord
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.generation import Generation
from mediasearch.vector_index.segment import write_segment
from mediasearch.vector_index.store import SegmentStore


def stage_segment(
    store: SegmentStore,
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    shard: int,
    model_version: str,
    config: BuildConfig,
    work_dir: Path | None = None,
    generation: Generation | None = None,
    lists: np.ndarray | None = None,
) -> SegmentRecord:
    """Write and upload one immutable segment; nothing serves it until its record is published.
    With ``generation``, the vectors go into its lists (``lists``: already placed)."""
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="segment-") as tmp:
        folder = Path(tmp) / "segment"
        meta = write_segment(
            folder, vectors, ids, shard=shard, model_version=model_version, config=config,
            generation=generation, lists=lists,
        )  # fmt: skip
        uri = store.put(folder, meta)
    return SegmentRecord.from_meta(meta, uri)
