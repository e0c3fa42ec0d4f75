"""Helpers shared by the index tests: data, brute force, a SQLite manifest, segment publishing,
index generations."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.metadata.segment_manifest import SegmentRecord, publish, switch_generation
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.generation import Generation, GenerationRecord, imbalance, train_generation
from mediasearch.vector_index.store import SegmentStore
from mediasearch.vector_index.writer import stage_segment

MODEL = "test-model-v1"


def unit_vectors(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, d: int = 32, clusters: int = 20, spread: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit_vectors(clusters, d, seed + 1)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(
    vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, excluded: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product with the project's tie-break (score desc, id asc)."""
    keep = np.ones(len(ids), bool) if excluded is None else ~np.isin(ids, excluded)
    vectors, ids = vectors[keep], ids[keep]
    scores = queries @ vectors.T
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0]) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def sessions_for(url: str) -> sessionmaker[Session]:
    """Sessions on a migrated database (dispose with :func:`dispose`)."""
    engine = make_engine(url)
    migrate(engine)
    return session_factory(engine)


def sqlite_sessions(folder: Path) -> sessionmaker[Session]:
    return sessions_for(f"sqlite:///{folder / 'meta.db'}")


def add_segment(
    sessions: sessionmaker[Session],
    store: SegmentStore,
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    shard: int = 0,
    config: BuildConfig | None = None,
    model_version: str = MODEL,
    generation: Generation | None = None,
) -> SegmentRecord:
    """Stage and publish one segment (what the indexer does per batch); with ``generation``, its
    vectors go into that generation's lists (the caller picks the shard that owns them)."""
    record = stage_segment(
        store,
        vectors,
        ids,
        shard=shard,
        model_version=model_version,
        config=config or BuildConfig.defaults(),
        generation=generation,
    )
    publish(sessions, add=[record])
    return record


def store_generation(
    store: SegmentStore,
    vectors: np.ndarray,
    *,
    number: int = 1,
    num_shards: int = 1,
    config: BuildConfig | None = None,
    model_version: str = MODEL,
) -> tuple[Generation, GenerationRecord, np.ndarray]:
    """Train index generation ``number`` on ``vectors`` and put its artifact in ``store`` (nothing
    makes it live): the generation, its manifest record, and the list of each vector."""
    generation, lists = train_generation(
        vectors, number=number, num_shards=num_shards, config=config or BuildConfig.defaults()
    )
    segment_id = f"g{number:06d}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="generation-") as tmp:
        folder = Path(tmp) / "quantizer"
        meta = generation.write(folder, model_version=model_version, segment_id=segment_id)
        uri = store.put(folder, meta)
    record = GenerationRecord(
        number,
        model_version,
        generation.nlist,
        num_shards,
        segment_id,
        uri,
        len(vectors),
        imbalance(generation.shard_sizes()),
    )
    return generation, record, lists


def publish_generation(
    sessions: sessionmaker[Session],
    store: SegmentStore,
    vectors: np.ndarray,
    *,
    number: int = 1,
    num_shards: int = 1,
    config: BuildConfig | None = None,
    model_version: str = MODEL,
) -> tuple[Generation, GenerationRecord]:
    """:func:`store_generation`, then make it the live generation (the previous one retired); the
    live segments are left as they are (the rebalancer would rewrite them)."""
    generation, record, _ = store_generation(
        store, vectors, number=number, num_shards=num_shards, config=config, model_version=model_version
    )
    with sessions.begin() as session:
        switch_generation(session, record)
    return generation, record


def dispose(sessions: sessionmaker[Session]) -> None:
    bind = sessions.kw.get("bind")
    if isinstance(bind, Engine):
        bind.dispose()
