"""Coalesce concurrent searches into shared fan-outs (the router's micro-batcher).

Every fan-out costs one RPC per shard, and on a small CPU budget the RPC overhead (serialise,
syscalls, thread hand-off on the server) is comparable to the FAISS work itself. Searches that
arrive while ``max_inflight`` fan-outs are already running wait and leave together in the next
one: one RPC per shard carries many queries, and FAISS searches them in one call. A search that
arrives when a slot is free leaves at once, so an idle router adds no latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

Key = tuple[object, ...]
FanOut = Callable[[np.ndarray, Key, float], Awaitable[tuple[np.ndarray, np.ndarray, tuple[int, ...]]]]


@dataclass
class _Waiting:
    queries: np.ndarray
    deadline: float
    future: asyncio.Future[tuple[np.ndarray, np.ndarray, tuple[int, ...]]]


@dataclass
class _Lane:
    waiting: list[_Waiting] = field(default_factory=list)
    running: int = 0


class Coalescer:
    """Groups searches with the same key (parameters) into batches of at most ``max_rows``."""

    def __init__(self, fan_out: FanOut, *, max_inflight: int = 2, max_rows: int = 64) -> None:
        self.fan_out = fan_out
        self.max_inflight = max_inflight
        self.max_rows = max_rows
        self._lanes: dict[Key, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(
        self, queries: np.ndarray, key: Key, deadline: float
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        """(scores, ids, missing shards) for these queries, possibly from a shared fan-out."""
        future = asyncio.get_running_loop().create_future()
        lane = self._lanes.setdefault(key, _Lane())
        lane.waiting.append(_Waiting(queries, deadline, future))
        if lane.running < self.max_inflight:
            lane.running += 1
            task = asyncio.create_task(self._drain(key, lane))
            self._tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, key: Key, lane: _Lane) -> None:
        try:
            while lane.waiting:
                batch = self._take(lane)
                queries = np.concatenate([w.queries for w in batch]) if len(batch) > 1 else batch[0].queries
                try:
                    scores, ids, missing = await self.fan_out(queries, key, min(w.deadline for w in batch))
                except BaseException as exc:
                    for w in batch:
                        if not w.future.done():
                            w.future.set_exception(exc)
                    continue
                row = 0
                for w in batch:
                    n = len(w.queries)
                    if not w.future.done():
                        w.future.set_result((scores[row : row + n], ids[row : row + n], missing))
                    row += n
        finally:
            lane.running -= 1
            if lane.running == 0 and not lane.waiting:
                self._lanes.pop(key, None)

    def _take(self, lane: _Lane) -> list[_Waiting]:
        batch: list[_Waiting] = []
        rows = 0
        while lane.waiting and (not batch or rows + len(lane.waiting[0].queries) <= self.max_rows):
            w = lane.waiting.pop(0)
            batch.append(w)
            rows += len(w.queries)
        return batch
