"""Admission control: a bounded number of searches run at once; the rest wait in a short queue, and
a search that would not get its turn before its deadline is refused at once (RESOURCE_EXHAUSTED).

Without it, an overload collapses: every queued search reaches the encoder, waits past its
deadline, and the encoder spends its time on answers nobody will read (goodput falls to almost
nothing). Here the encoder works on at most ``max_active`` searches (enough to fill its batches:
with 8, 16 callers' searches reached the CPU text tower 2.4 to a pass against 8 for the encoder
alone, and the gateway gave 0.58 of the encoder's own throughput; with 32, 4.2 to a pass and 0.78,
latency staying well inside a 1 s deadline in bench/query.py's overload check), and callers
beyond what it can serve in time get a quick, cheap refusal they can retry or shed, while the
admitted ones keep their normal latency.

The wait is predicted from the queue ahead and the mean time a search holds its slot (an
exponentially weighted average of recent searches); a queued search is admitted only if that
prediction fits in 3/4 of its remaining time (the margin covers the latency tail).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from mediasearch.errors import DeadlineExceeded, Overloaded

MARGIN = 0.75  # a queued search is admitted when its predicted time fits in 3/4 of what it has left


class Admission:
    def __init__(self, max_active: int = 8, max_queued: int = 256, initial_service_s: float = 0.05) -> None:
        self.max_active = max_active
        self.max_queued = max_queued
        self.service_s = initial_service_s  # EWMA of how long a search holds its slot
        self.active = 0
        self.queued = 0
        self._slots = asyncio.Semaphore(max_active)

    def predicted_wait_s(self) -> float:
        if self.active < self.max_active and self.queued == 0:
            return 0.0
        return (self.queued + 1) * self.service_s / self.max_active

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[None]:
        """Hold one of ``max_active`` slots for the body; ``deadline`` is on the loop's clock."""
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if self.queued >= self.max_queued:
            raise Overloaded(f"{self.queued} searches are queued; try again shortly")
        wait = self.predicted_wait_s()
        # (no queue: always admitted; a deadline too short even when idle is a deadline matter)
        if wait > 0 and wait + self.service_s > MARGIN * remaining:
            raise Overloaded(
                f"overloaded: a search would wait ~{wait * 1e3:.0f} ms and take "
                f"~{self.service_s * 1e3:.0f} ms, but its deadline is in {remaining * 1e3:.0f} ms"
            )
        waited = self._slots.locked()
        if not waited:
            await self._slots.acquire()  # free slot: taken at once, no task, no queue
        else:
            self.queued += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout=max(remaining, 0.0))
            except TimeoutError as exc:
                raise DeadlineExceeded("the deadline passed while the search waited for its turn") from exc
            finally:
                self.queued -= 1
        left = deadline - loop.time()
        if waited and left < 0.8 * self.service_s:
            # its turn came too late to finish: give the slot to a search that can, rather than
            # spend encoder time on an answer nobody will read (only a search that had to queue:
            # an idle gateway always tries)
            self._slots.release()
            raise DeadlineExceeded(
                f"the search got its turn with {left * 1e3:.0f} ms left; "
                f"it takes ~{self.service_s * 1e3:.0f} ms"
            )
        self.active += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()
            self.service_s = 0.9 * self.service_s + 0.1 * (time.perf_counter() - started)
