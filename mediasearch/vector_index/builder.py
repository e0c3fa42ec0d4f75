"""Choose and build a segment's FAISS index from its size.

Small segments (the indexer's per-batch output) are searched exactly: a flat inner-product scan
of a few thousand vectors costs microseconds and needs no training. Large segments (the
compactor's output) get ``IVF{nlist}_HNSW32,<encoding>``, the best CPU speed/recall trade-off
from ~1M vectors per FAISS's guidance, with nlist from the sqrt(N) rule (4*sqrt(N)..16*sqrt(N)).
Every index uses inner product on L2-normalised vectors, i.e. cosine similarity.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from mediasearch.errors import ConfigError, InvalidInput
from mediasearch.settings import FromSettings, Settings

log = logging.getLogger(__name__)

_ENCODINGS = re.compile(r"^(Flat|SQ8|SQ4|SQfp16|PQ\d+(x\d+)?)$")
_ADD_CHUNK = 65_536


@dataclass(frozen=True)
class BuildConfig(FromSettings):
    """The knobs that decide a segment's index; read from settings so every writer agrees."""

    flat_max: int
    encoding: str
    nlist_factor: float
    train_per_list: int
    assign_ef: int
    hnsw_m: int = 32
    seed: int = 1234

    def __post_init__(self) -> None:
        if not _ENCODINGS.match(self.encoding):
            raise ConfigError(f"index encoding {self.encoding!r} is not Flat, SQ8, SQ4, SQfp16 or PQ<m>")

    @classmethod
    def from_settings(cls, settings: Settings) -> BuildConfig:
        return cls(
            flat_max=settings.index_flat_max,
            encoding=settings.index_encoding,
            nlist_factor=settings.index_nlist_factor,
            train_per_list=settings.index_train_per_list,
            assign_ef=settings.index_assign_ef,
        )


@dataclass(frozen=True)
class IndexSpec:
    """What kind of index a segment of a given size gets."""

    kind: str  # "flat" or "ivf"
    nlist: int = 0
    encoding: str = "Flat"
    hnsw_m: int = 32

    @property
    def factory(self) -> str:
        if self.kind == "flat":
            return "IDMap,Flat"
        return f"IVF{self.nlist}_HNSW{self.hnsw_m},{self.encoding}"


def nlist_for(n: int, factor: float) -> int:
    """factor*sqrt(N) rounded to the nearest power of two (FAISS likes powers of two, and the
    rounding keeps nlist stable while a shard grows a little)."""
    target = max(1.0, factor * math.sqrt(n))
    return int(2 ** round(math.log2(target)))


def choose_spec(n: int, config: BuildConfig) -> IndexSpec:
    """Flat below ``flat_max`` vectors; IVF-HNSW above, with nlist capped so each list still gets
    ``train_per_list`` training vectors (k-means on fewer points per centroid is noise)."""
    if n < config.flat_max:
        return IndexSpec("flat")
    nlist = nlist_for(n, config.nlist_factor)
    while nlist > 1 and nlist * config.train_per_list > n:
        nlist //= 2
    return IndexSpec("ivf", nlist=nlist, encoding=config.encoding, hnsw_m=config.hnsw_m)


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


def build_index(vectors: np.ndarray, ids: np.ndarray, config: BuildConfig) -> tuple[faiss.Index, IndexSpec]:
    """Build (and for IVF, train) the index a segment of this size gets, with its ids."""
    vectors, ids = check_vectors(vectors, ids)
    spec = choose_spec(len(ids), config)
    index = faiss.index_factory(vectors.shape[1], spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "ivf":
        _train_ivf(index, vectors, spec, config)
        _add_through_quantizer(index, vectors, ids, config.assign_ef)
    else:
        index.add_with_ids(vectors, ids)
    return index, spec


def _train_ivf(index: faiss.Index, vectors: np.ndarray, spec: IndexSpec, config: BuildConfig) -> None:
    """k-means on a sample, with a flat clustering index: training through the HNSW quantizer
    would rebuild the graph every iteration. The centroids then go into the HNSW quantizer."""
    ivf: Any = faiss.extract_index_ivf(index)
    clustering = faiss.IndexFlatIP(vectors.shape[1])
    ivf.clustering_index = clustering
    ivf.cp.seed = config.seed
    n_train = min(len(vectors), spec.nlist * config.train_per_list)
    rng = np.random.default_rng(config.seed)
    sample = vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))]
    log.info("training %s on %d of %d vectors", spec.factory, n_train, len(vectors))
    index.train(sample)
    ivf.clustering_index = None


def _add_through_quantizer(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, assign_ef: int) -> None:
    """Add with the HNSW quantizer's efSearch raised: at its default (16) ~0.5% of vectors land in
    a non-nearest list and become unreachable at low nprobe, capping recall near 0.995."""
    ivf = faiss.extract_index_ivf(index)
    hnsw: Any = faiss.downcast_index(ivf.quantizer)
    previous = hnsw.hnsw.efSearch
    hnsw.hnsw.efSearch = max(previous, assign_ef)
    for start in range(0, len(vectors), _ADD_CHUNK):
        stop = start + _ADD_CHUNK
        index.add_with_ids(vectors[start:stop], ids[start:stop])
    hnsw.hnsw.efSearch = previous
