"""The build knobs every writer agrees on, vector checks, and the exact (flat) index.

A segment without an index generation (the exact layout of a small index: every indexer batch
before the first generation, and their merges) is a flat inner-product scan, exact and
training-free; a few thousand vectors cost microseconds. Above ``index_generation_min`` vectors
the index gets a generation (:mod:`mediasearch.vector_index.generation`): one trained coarse
quantizer whose lists the shards own, with ``encoding`` codes re-ranked exactly. ``nlist`` follows
the sqrt(N) rule (4*sqrt(N)..16*sqrt(N), FAISS's guidance). Every index uses inner product on
L2-normalised vectors, i.e. cosine similarity.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import faiss
import numpy as np

from mediasearch.errors import ConfigError, InvalidInput
from mediasearch.settings import FromSettings, Settings

_ENCODINGS = re.compile(r"^(Flat|SQ8|SQ4|SQfp16|PQ\d+(x\d+)?)$")
FLAT = "IDMap,Flat"


@dataclass(frozen=True)
class BuildConfig(FromSettings):
    """The knobs of a generation's index; read from settings so every writer agrees."""

    encoding: str
    nlist_factor: float
    train_per_list: int
    seed: int = 1234

    def __post_init__(self) -> None:
        if not _ENCODINGS.match(self.encoding):
            raise ConfigError(f"index encoding {self.encoding!r} is not Flat, SQ8, SQ4, SQfp16 or PQ<m>")

    @classmethod
    def from_settings(cls, settings: Settings) -> BuildConfig:
        return cls(
            encoding=settings.index_encoding,
            nlist_factor=settings.index_nlist_factor,
            train_per_list=settings.index_train_per_list,
        )


def nlist_for(n: int, factor: float) -> int:
    """factor*sqrt(N) rounded to the nearest power of two (FAISS likes powers of two, and the
    rounding keeps nlist stable while the index grows a little)."""
    target = max(1.0, factor * math.sqrt(n))
    return int(2 ** round(math.log2(target)))


def check_vectors(vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Refuse what would silently corrupt a segment: wrong shapes, duplicate ids, unnormalised
    vectors (inner product is only cosine on unit vectors)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or ids.ndim != 1 or len(ids) != len(vectors):
        raise InvalidInput(f"need (n, d) vectors and n ids; got {vectors.shape} and {ids.shape}")
    if len(ids) and len(np.unique(ids)) != len(ids):
        raise InvalidInput("segment ids must be unique")
    if len(ids) and (ids < 0).any():
        raise InvalidInput("segment ids must be non-negative (FAISS uses -1 for 'no result')")
    norms = np.linalg.norm(vectors, axis=1)
    if len(norms) and not np.allclose(norms, 1.0, atol=1e-3):
        raise InvalidInput("vectors must be L2-normalised (inner product on unit vectors = cosine)")
    return vectors, ids


def build_flat(vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """The exact index of a segment without a generation."""
    vectors, ids = check_vectors(vectors, ids)
    index = faiss.index_factory(vectors.shape[1], FLAT, faiss.METRIC_INNER_PRODUCT)
    index.add_with_ids(vectors, ids)
    return index
