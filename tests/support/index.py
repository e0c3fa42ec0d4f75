"""Helpers shared by the index tests: data, brute force, a SQLite manifest, segment publishing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.metadata.segment_manifest import SegmentRecord, publish
from mediasearch.vector_index.builder import BuildConfig
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
) -> SegmentRecord:
    """Stage and publish one segment (what the indexer does per batch)."""
    record = stage_segment(
        store, vectors, ids, shard=shard, model_version=model_version, config=config or BuildConfig.defaults()
    )
    publish(sessions, add=[record])
    return record


def dispose(sessions: sessionmaker[Session]) -> None:
    bind = sessions.kw.get("bind")
    if isinstance(bind, Engine):
        bind.dispose()
