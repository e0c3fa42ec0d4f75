"""Synthetic CLIP-like vectors for the index benchmark: clustered image vectors, shifted queries.

Image vectors: a mixture of ``clusters`` Gaussian clusters on the unit sphere, cluster sizes
Zipf-like, within-cluster noise with a power-law variance spectrum in a random basis (a few
directions carry most of the variance, as in real embeddings). Queries come from a shifted
distribution: a cluster centre plus a fixed "modality gap" direction plus wider noise, so they are
out of distribution for the index, like text queries against an image index. The defaults are
calibrated at the 1M scale so IVF at nprobe=1 gets recall@10 < 0.6 (an easy generator would
flatter IVF). One shard's 250k in IVF2048,SQ8 at efSearch 128: zipf 0.9 / query spread 1.6 / gap
0.9 gave 0.605 and spread 1.8 / gap 1.0 gave 0.572; the 4-shard index reads ~0.02-0.04 higher
(spread 1.7 gave 0.609 sharded). The quantizer's efSearch matters as much as nprobe for these
out-of-distribution queries: at efSearch 32 recall plateaued near 0.89 whatever nprobe. Cluster
count scales with n (n // 500) but Zipf sizes do not scale exactly, so small --n runs are easier.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np


@dataclass(frozen=True)
class DataSpec:
    n: int = 1_000_000
    dim: int = 512
    clusters: int = 0  # 0: n // 500 (2000 at 1M), so points per cluster stay constant with n
    spread: float = 0.6  # noise norm relative to the (unit) centre norm
    alpha: float = 1.0  # variance of direction i ~ (i + 1) ** -alpha
    zipf: float = 0.9  # cluster size ~ (rank + 1) ** -zipf: big clusters span many inverted lists
    query_gap: float = 1.0  # norm of the shared query shift (the "modality gap")
    query_spread: float = 1.8
    seed: int = 0

    @property
    def n_clusters(self) -> int:
        return self.clusters or max(20, self.n // 500)


class Generator:
    """Deterministic per spec; vectors are produced in chunks to bound peak memory."""

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        d = spec.dim
        self.centres = _unit(rng.standard_normal((spec.n_clusters, d)).astype(np.float32))
        weights = (np.arange(spec.n_clusters) + 1.0) ** -spec.zipf
        self.weights = weights / weights.sum()
        scale = (np.arange(d) + 1.0) ** (-spec.alpha / 2)
        self.scale = (scale / np.linalg.norm(scale)).astype(np.float32)  # unit total variance
        self.basis = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
        self.gap = _unit(rng.standard_normal((1, d)).astype(np.float32))[0] * spec.query_gap

    def _noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        z = rng.standard_normal((n, self.spec.dim)).astype(np.float32) * self.scale
        return z @ self.basis

    def vectors(self, chunk: int = 100_000) -> np.ndarray:
        out = np.empty((self.spec.n, self.spec.dim), dtype=np.float32)
        for i, start in enumerate(range(0, self.spec.n, chunk)):
            rng = np.random.default_rng([self.spec.seed, 1, i])
            m = min(chunk, self.spec.n - start)
            labels = rng.choice(self.spec.n_clusters, m, p=self.weights)
            noise = self._noise(rng, m) * self.spec.spread
            out[start : start + m] = _unit(self.centres[labels] + noise)
        return out

    def queries(self, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.spec.seed, 2])
        labels = rng.choice(self.spec.n_clusters, n, p=self.weights)
        noise = self._noise(rng, n) * self.spec.query_spread
        return _unit(self.centres[labels] + self.gap + noise)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ground_truth(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Exact top-k ids (inner product), chunked through FAISS's BLAS flat search."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors[start : start + chunk])
        scores, ids = index.search(queries, k)
        scores_all = np.concatenate([best_scores, scores], axis=1)
        ids_all = np.concatenate([best_ids, ids + start], axis=1)
        order = np.argsort(-scores_all, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(scores_all, order, axis=1)
        best_ids = np.take_along_axis(ids_all, order, axis=1)
    return best_ids


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size
