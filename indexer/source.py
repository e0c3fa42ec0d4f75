"""Where work comes from: one small interface, three real sources and a fake.

A :class:`Source` hands out :class:`Delivery` objects (one SQS message, one listed object, one
file); each carries the object events it contains. The runner calls :meth:`Source.ack` only after
the transaction that recorded every event of a delivery has committed, and :meth:`Source.retry`
for a delivery whose object could not be fetched (it comes back later). Methods are synchronous
(boto3 is); the runner calls them from worker threads.

Real sources: :class:`~mediasearch.indexer.sqs.SqsSource` (S3 events),
:class:`~mediasearch.indexer.backfill.ListingSource` (bucket listing),
:class:`~mediasearch.indexer.folder.FolderSource` (a local folder). :class:`MemorySource` is the
in-package fake for unit tests.
"""

from __future__ import annotations

import abc
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mediasearch.indexer.events import ObjectEvent


@dataclass(eq=False)
class Delivery:
    """One unit of acknowledgement: its events are all recorded before it is acknowledged."""

    events: list[ObjectEvent]
    token: Any = None  # source-specific: an SQS receipt handle, a path, ...
    received: float = field(default_factory=time.monotonic)
    receives: int = 1  # how many times the source has handed it out (SQS ApproximateReceiveCount)
    done: int = 0
    retry: bool = False


class Source(abc.ABC):
    """A stream of deliveries."""

    #: How many deliveries are expected in all (a progress bar's total), when known.
    total: int | None = None
    #: How often :meth:`heartbeat` must be called while deliveries are in flight (None: any).
    heartbeat_s: float | None = None

    @abc.abstractmethod
    def receive(self, max_deliveries: int) -> list[Delivery] | None:
        """Up to ``max_deliveries`` deliveries; ``[]`` when none arrived this time (may block up
        to a long-poll wait), None when the source is exhausted (a listing or a folder is done)."""

    @abc.abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Their events are recorded: never hand them out again."""

    def retry(self, deliveries: Sequence[Delivery]) -> None:  # noqa: B027 - optional hook
        """Their events could not be processed now; hand them out again later if the source can."""

    def release_in_flight(self) -> int:
        """Hand back every delivery not yet acknowledged, at once (an indexer stopping before it
        could finish them: another worker takes them now, not after a timeout); how many."""
        return 0

    def heartbeat(self) -> None:  # noqa: B027 - optional hook
        """Called every few seconds while deliveries are in flight (SQS extends their visibility)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class ListedSource(Source):
    """A source listed once up front (a bucket listing, a folder): deliveries come from
    ``self._pending`` until it is empty; acknowledging is a no-op, the database remembers."""

    def __init__(self) -> None:
        self._pending: deque[Delivery] = deque()

    def receive(self, max_deliveries: int) -> list[Delivery] | None:
        if not self._pending:
            return None
        return [self._pending.popleft() for _ in range(min(max_deliveries, len(self._pending)))]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        pass

    def add_removals(self, bucket: str, keys: Iterable[str]) -> int:
        """Queue an ObjectRemoved for each key (``--prune``: recorded, but no longer listed). The
        pipeline handles them like S3's own: a key re-created since the listing is kept."""
        removals = [Delivery([ObjectEvent("removed", bucket, key)], token=key) for key in sorted(keys)]
        self._pending.extend(removals)
        self.total = (self.total or 0) + len(removals)
        return len(removals)


class MemorySource(Source):
    """In-process fake: deliveries from a list; acked and retried ones are recorded for asserts."""

    def __init__(self, batches: Iterable[Sequence[ObjectEvent]], *, redeliver: bool = False) -> None:
        self._pending = [Delivery(list(events), token=i) for i, events in enumerate(batches)]
        self.total = len(self._pending)
        self.redeliver = redeliver
        self.acked: list[Delivery] = []
        self.retried: list[Delivery] = []
        self._lock = threading.Lock()

    def receive(self, max_deliveries: int) -> list[Delivery] | None:
        with self._lock:
            if not self._pending:
                return None
            out, self._pending = self._pending[:max_deliveries], self._pending[max_deliveries:]
            return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            self.acked.extend(deliveries)

    def retry(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            self.retried.extend(deliveries)
            if self.redeliver:
                self._pending.extend(Delivery(d.events, d.token, receives=d.receives + 1) for d in deliveries)
