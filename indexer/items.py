"""What flows between the stages (:class:`Item`) and what a run reports (:class:`IndexReport`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from mediasearch.indexer.events import ObjectEvent
from mediasearch.indexer.source import Delivery
from mediasearch.objects import StoredObject

#: What became of an event. indexed/failed/removed are recorded in the database; the others are not.
Outcome = Literal["indexed", "failed", "removed", "duplicate", "gone", "stale", "retry"]


@dataclass(eq=False)
class Item:
    """One object event on its way through the stages; each stage fills in its part."""

    delivery: Delivery
    event: ObjectEvent
    fetched: StoredObject | None = None
    pixels: NDArray[np.uint8] | None = None  # the vision tower's input, once decoded
    encoded: bytes | None = None  # or the file itself, for an encoder that decodes on its server
    thumbnail: bytes | None = None  # WebP, stored with the row when it is published INDEXED
    width: int | None = None
    height: int | None = None
    vector: NDArray[np.float32] | None = None
    # dual write: (the generation being built, its model's version, this image's vector by it)
    shadow: tuple[int, str, NDArray[np.float32]] | None = None
    shadow_kept: bool = False  # that generation is the one a rollback returns to, not one being built
    error: str | None = None  # why the object cannot be indexed (recorded as FAILED)
    outcome: Outcome | None = None  # set early for events that need no database record
    image_id: int | None = None

    @property
    def uri(self) -> str:
        return f"{self.event.bucket}/{self.event.key}"


@dataclass
class IndexReport:
    """Counts of one run. ``failures`` keeps the first :data:`MAX_FAILURES` reasons."""

    indexed: int = 0
    failed: int = 0
    removed: int = 0
    skipped: int = 0  # duplicates, stale events, objects gone before they were fetched
    retried: int = 0  # could not be fetched or encoded now; left for a later run or redelivery
    failures: list[tuple[str, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    MAX_FAILURES = 100

    @property
    def processed(self) -> int:
        return self.indexed + self.failed + self.removed + self.skipped

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def count(self, item: Item) -> None:
        outcome = item.outcome
        if outcome == "indexed":
            self.indexed += 1
        elif outcome == "failed":
            self.failed += 1
            if len(self.failures) < self.MAX_FAILURES:
                self.failures.append((item.uri, item.error or "unknown error"))
        elif outcome == "removed":
            self.removed += 1
        elif outcome == "retry":
            self.retried += 1
        else:
            self.skipped += 1

    def summary(self) -> str:
        rate = self.indexed / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"indexed {self.indexed}, failed {self.failed}, removed {self.removed}, "
            f"skipped {self.skipped}, retry later {self.retried} "
            f"in {self.elapsed_s:.1f}s ({rate:.1f} images/s)"
        )
