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

    Missing results (id -1) sort last and stay -1 with score -inf in the output. An id that
    several sources return (a vector served by its old and its new shard for the moment a
    generation switch takes to reach every shard) is kept once, at its best score.
    """
    if not scores:
        raise ValueError("merge_topk needs at least one source")
    if all(len(s) == 1 for s in scores):
        return _merge_one(scores, ids, k)
    all_scores = np.concatenate([np.asarray(s, dtype=np.float32) for s in scores], axis=1)
    all_ids = np.concatenate([np.asarray(i, dtype=np.int64) for i in ids], axis=1)
    missing = all_ids < 0
    key_scores = np.where(missing, -np.inf, all_scores)
    key_ids = np.where(missing, np.iinfo(np.int64).max, all_ids)
    order = np.lexsort((key_ids, -key_scores), axis=1)
    if len(scores) > 1 and _drop_repeats(all_ids, missing, order):
        key_scores = np.where(missing, -np.inf, all_scores)
        key_ids = np.where(missing, np.iinfo(np.int64).max, all_ids)
        order = np.lexsort((key_ids, -key_scores), axis=1)
    order = order[:, :k]
    out_scores = np.take_along_axis(key_scores, order, axis=1).astype(np.float32)
    out_ids = np.take_along_axis(all_ids, order, axis=1)
    out_ids[np.take_along_axis(missing, order, axis=1)] = NO_ID
    if out_ids.shape[1] < k:  # fewer candidates than k in total: pad
        pad = k - out_ids.shape[1]
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=NO_ID)
    return out_scores, out_ids


def _merge_one(
    scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """merge_topk for one query (most calls): the same order and rules on flat arrays."""
    flat_scores = np.concatenate([np.asarray(s, dtype=np.float32).ravel() for s in scores])
    flat_ids = np.concatenate([np.asarray(i, dtype=np.int64).ravel() for i in ids])
    found = flat_ids >= 0
    flat_scores, flat_ids = flat_scores[found], flat_ids[found]
    order = np.lexsort((flat_ids, -flat_scores))
    flat_scores, flat_ids = flat_scores[order], flat_ids[order]
    if len(scores) > 1:
        unique, first = np.unique(flat_ids, return_index=True)
        if len(unique) < len(flat_ids):  # an id from two sources: its best-ranked copy stays
            first.sort()
            flat_scores, flat_ids = flat_scores[first], flat_ids[first]
    out_scores = np.full((1, k), -np.inf, dtype=np.float32)
    out_ids = np.full((1, k), NO_ID, dtype=np.int64)
    n = min(k, len(flat_ids))
    out_scores[0, :n], out_ids[0, :n] = flat_scores[:n], flat_ids[:n]
    return out_scores, out_ids


def _drop_repeats(ids: np.ndarray, missing: np.ndarray, order: np.ndarray) -> bool:
    """Mark every occurrence of an id after its best-ranked one as missing (in place); False
    when there was none."""
    by_id = np.sort(np.where(missing, -1, ids), axis=1)
    if not ((by_id[:, 1:] == by_id[:, :-1]) & (by_id[:, 1:] >= 0)).any():
        return False  # the usual case: sources hold disjoint ids
    for row in range(len(ids)):
        ranked = ids[row, order[row]]
        _, first = np.unique(ranked, return_index=True)
        repeat = np.ones(len(ranked), dtype=bool)
        repeat[first] = False
        missing[row, order[row][repeat]] = True
    return True
