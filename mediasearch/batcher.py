"""An asyncio micro-batcher: concurrent callers share forward passes (or fan-outs, or queries).

The project's one implementation of the idea: the encoders' forward passes, the router's shard
fan-outs and the gateway's metadata lookups all go through it.

Callers :meth:`MicroBatcher.submit` their items and await their own results. One worker task takes
the oldest pending items (up to ``max_batch``) as soon as the batch is full, or ``max_wait_s`` after
the oldest item arrived, and hands them to ``run`` (a coroutine: an ONNX Runtime pass in an executor
thread, so the event loop never blocks, or a request to Triton). At most ``max_inflight`` passes run
at once; while they do, new requests queue up and form the next batch: under load, batches grow by
themselves. The wait only applies while another pass is running: on an idle encoder a request
runs at once (waiting there would add ``max_wait_s`` to every query at low load), and whatever
arrives meanwhile forms the next batch.

A batch can be split before it runs (``split``): text batches are sorted by token length and cut
where padding every row to the batch's longest would waste more than one extra pass costs. The
parts are separate passes and take free slots side by side.

Errors: a failing pass fails only the callers whose items were in it. A caller that gives up
(cancellation, deadline) has its items skipped if they have not run yet. The queue is bounded:
past ``max_queue`` waiting items, :class:`Overloaded` is raised at once instead of queuing forever.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mediasearch.errors import Overloaded, Unavailable

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """Counters for metrics and tests: how many passes ran and how full they were."""

    passes: int = 0
    items: int = 0
    sizes: list[int] = field(default_factory=list)

    def record(self, size: int, keep: int = 1024) -> None:
        self.passes += 1
        self.items += size
        self.sizes.append(size)
        del self.sizes[:-keep]


class MicroBatcher(Generic[T, R]):
    """Merge items from concurrent callers into batched calls of ``run``.

    ``run(items)`` returns one result per item, in order.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_inflight: int = 1,
        split: Callable[[list[T]], list[list[int]]] | None = None,
        max_queue: int = 4096,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be at least 1")
        self._run_fn, self._split = run, split
        self.max_batch, self.max_wait_s, self.max_queue, self.name = max_batch, max_wait_s, max_queue, name
        self.max_inflight = max_inflight
        self._pending: deque[_Pending[T, R]] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_inflight)
        self._passes: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = BatchStats()

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Queue ``items`` and wait for their results (in order)."""
        if self._closed:
            raise Unavailable(f"{self.name} is closed")
        if not items:
            return []
        if len(self._pending) + len(items) > self.max_queue:
            raise Overloaded(f"{self.name}: {len(self._pending)} items waiting (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        entries = [_Pending[T, R](item, loop.create_future()) for item in items]
        self._pending.extend(entries)
        self._wakeup.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work(), name=self.name)
        outcomes = await asyncio.gather(*(e.future for e in entries), return_exceptions=True)
        for outcome in outcomes:  # every future is awaited, so none logs "exception never retrieved"
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes  # type: ignore[return-value]

    async def close(self) -> None:
        """Stop the worker and running passes; callers still waiting get :class:`Unavailable`."""
        self._closed = True
        tasks = [t for t in (self._worker, *self._passes) if t is not None]
        self._worker = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail(list(self._pending), Unavailable(f"{self.name} closed before the item ran"))
        self._pending.clear()

    # -- worker -----------------------------------------------------------------------------
    async def _work(self) -> None:
        while not self._closed:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()  # while every slot is busy, the next batch keeps growing
            if self._passes:  # an idle encoder runs a lone request at once: waiting buys no batch-mates
                await self._fill()
            window = self._take()
            if not window:
                self._slots.release()
                continue
            groups = self._split([p.item for p in window]) if self._split and len(window) > 1 else None
            batches = [[window[i] for i in group] for group in groups or [list(range(len(window)))]]
            for k, batch in enumerate(batches):
                if k:  # the groups of one window run side by side when slots allow
                    try:
                        await self._slots.acquire()
                    except asyncio.CancelledError:
                        self._fail([p for b in batches[k:] for p in b], Unavailable(f"{self.name} closed"))
                        raise
                task = asyncio.get_running_loop().create_task(self._run_in_slot(batch))
                self._passes.add(task)
                task.add_done_callback(self._passes.discard)

    async def _run_in_slot(self, batch: list[_Pending[T, R]]) -> None:
        try:
            await self._run(batch)
        finally:
            self._slots.release()

    async def _fill(self) -> None:
        """Wait until the batch is full or the oldest item has waited ``max_wait_s``."""
        while len(self._pending) < self.max_batch:
            remaining = self._pending[0].enqueued + self.max_wait_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending[T, R]]:
        """Up to ``max_batch`` of the oldest items whose callers are still waiting."""
        window: list[_Pending[T, R]] = []
        while self._pending and len(window) < self.max_batch:
            entry = self._pending.popleft()
            if not entry.future.done():  # done here means cancelled by its caller
                window.append(entry)
        return window

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        try:
            results = await self._run_fn([p.item for p in batch])
        except asyncio.CancelledError:
            self._fail(batch, Unavailable(f"{self.name} closed while the item ran"))
            raise
        except Exception as exc:
            self._fail(batch, exc)
            return
        if len(results) != len(batch):
            self._fail(batch, RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} items"))
            return
        self.stats.record(len(batch))
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)

    @staticmethod
    def _fail(batch: Sequence[_Pending[T, R]], exc: BaseException) -> None:
        for entry in batch:
            if not entry.future.done():
                entry.future.set_exception(exc)
