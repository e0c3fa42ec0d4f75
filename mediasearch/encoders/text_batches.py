"""How text rows of different lengths are grouped and padded into batches.

CLIP's text tower costs roughly in proportion to ``rows x padded length``, and every row of a batch
is padded to the batch's longest (padding after the end token never changes an embedding: attention
is causal and the embedding is pooled at the first end token). Two policies, one per runtime:

- In-process (:func:`split_by_length`): the micro-batcher sorts a batch by length and cuts it where
  padding the short rows to the long ones would cost more than running one more, smaller pass.
- Triton (:func:`bucket_groups`): Triton's dynamic batcher only merges requests whose input shapes
  are identical (unless the input allows ragged batches), so the client pads each request up to a
  *length bucket* (a multiple of ``bucket`` tokens, at most the context length), cutting the sorted
  rows the same way but with bucketed widths. Requests from different callers then share a handful
  of shapes and can be merged by Triton, and no request is padded far beyond its longest row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from numpy.typing import NDArray


def pad_rows(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> NDArray[np.int64]:
    """Stack token rows into int64 ``[len(rows), width]``, padded after each row with ``pad_id``."""
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def bucket_length(length: int, bucket: int, context_length: int) -> int:
    """``length`` rounded up to a multiple of ``bucket``, never above ``context_length``."""
    if bucket <= 1:
        return length
    return min(-(-length // bucket) * bucket, max(context_length, length))


def bucket_groups(
    lengths: Sequence[int], *, bucket: int, context_length: int, max_batch: int, pass_cost_tokens: int
) -> list[tuple[int, list[int]]]:
    """``(padded width, row indices)`` requests for Triton: rows cut by length, widths on buckets."""
    width = partial(bucket_length, bucket=bucket, context_length=context_length)
    groups = split_by_length(lengths, pass_cost_tokens, width=width, max_rows=max_batch)
    return [(width(max(lengths[i] for i in group)), group) for group in groups]


def split_by_length(
    lengths: Sequence[int],
    pass_cost_tokens: int,
    *,
    width: Callable[[int], int] = lambda n: n,
    max_rows: int | None = None,
) -> list[list[int]]:
    """Index groups that minimise the total cost of running a batch, padding included.

    The cost of a pass is ``pass_cost_tokens + rows x width(longest row)`` (in token-row units): a
    fixed price per forward pass (launch, threads, small-matrix inefficiency) plus the padded compute.
    Rows are sorted by length and the best cut points are found exactly by dynamic programming
    (``O(n x max_rows)``). ``pass_cost_tokens`` <= 0 cuts only where ``max_rows`` forces it.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    limit = max_rows or max(n, 1)
    if n == 0:
        return []
    widths = [width(lengths[i]) for i in order]
    fixed = pass_cost_tokens if pass_cost_tokens > 0 else float(sum(widths) + 1)  # <= 0: fewest passes
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - limit), j):  # the last pass holds sorted rows i..j-1
            cost = best[i] + fixed + (j - i) * widths[j - 1]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]
