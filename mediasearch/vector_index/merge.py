"""Top-k merging with one deterministic order everywhere: score descending, then id ascending.

Segments, shards and the router all merge with this function, so the same data gives the same
ranking whatever the segment layout or shard count, and ties never flap between requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NO_ID = -1


def merge_topk(
    scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-source (nq, k_i) score/id arrays into the global (nq, k) top-k.

    Missing results (id -1) sort last and stay -1 with score -inf in the output.
    """
    if not scores:
        raise ValueError("merge_topk needs at least one source")
    all_scores = np.concatenate([np.asarray(s, dtype=np.float32) for s in scores], axis=1)
    all_ids = np.concatenate([np.asarray(i, dtype=np.int64) for i in ids], axis=1)
    missing = all_ids < 0
    key_scores = np.where(missing, -np.inf, all_scores)
    key_ids = np.where(missing, np.iinfo(np.int64).max, all_ids)
    order = np.lexsort((key_ids, -key_scores), axis=1)[:, :k]
    out_scores = np.take_along_axis(key_scores, order, axis=1).astype(np.float32)
    out_ids = np.take_along_axis(all_ids, order, axis=1)
    out_ids[np.take_along_axis(missing, order, axis=1)] = NO_ID
    if out_ids.shape[1] < k:  # fewer candidates than k in total: pad
        pad = k - out_ids.shape[1]
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=NO_ID)
    return out_scores, out_ids
