"""Which shard an image lives in. Pluggable: hash of the id (default) or a date bucket.

Hashing spreads ids evenly whatever their allocation pattern (sequences, snowflakes), so shards
stay the same size; a date bucket keeps an era of images together, so a time-filtered query may
skip shards and old buckets can be compacted once and left alone. Queries fan out to every shard
either way; partitioning only decides where writes go.
"""

from __future__ import annotations

import abc
from datetime import datetime

import numpy as np

from mediasearch.errors import ConfigError, InvalidInput

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(ids: np.ndarray) -> np.ndarray:
    """A fixed, platform-independent 64-bit mix (Python's hash() is salted per process)."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids, dtype=np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


class Partitioner(abc.ABC):
    """Maps image ids (and, for some rules, their creation time) to shard numbers."""

    def __init__(self, num_shards: int) -> None:
        if num_shards <= 0:
            raise ConfigError("num_shards must be positive")
        self.num_shards = num_shards

    @abc.abstractmethod
    def shards_for(self, ids: np.ndarray, created: np.ndarray | None = None) -> np.ndarray:
        """Shard number per id (int64 array, same length)."""

    def shard_for(self, image_id: int, created: datetime | None = None) -> int:
        stamps = None if created is None else np.array([created.timestamp()])
        return int(self.shards_for(np.array([image_id], dtype=np.int64), stamps)[0])


class HashPartitioner(Partitioner):
    """splitmix64(id) mod shards."""

    def shards_for(self, ids: np.ndarray, created: np.ndarray | None = None) -> np.ndarray:
        return (splitmix64(ids) % np.uint64(self.num_shards)).astype(np.int64)


class DateBucketPartitioner(Partitioner):
    """Buckets of ``bucket_days`` days of creation time, assigned to shards round-robin."""

    def __init__(self, num_shards: int, bucket_days: int = 30) -> None:
        super().__init__(num_shards)
        self.bucket_seconds = bucket_days * 86_400

    def shards_for(self, ids: np.ndarray, created: np.ndarray | None = None) -> np.ndarray:
        if created is None or len(created) != len(ids):
            raise InvalidInput("the date partitioner needs a creation time (unix seconds) per id")
        buckets = np.floor_divide(np.asarray(created, dtype=np.float64), self.bucket_seconds).astype(np.int64)
        return buckets % self.num_shards


def make_partitioner(name: str, num_shards: int) -> Partitioner:
    """The one factory, chosen by ``MEDIASEARCH_PARTITIONER``."""
    if name == "hash":
        return HashPartitioner(num_shards)
    if name.startswith("date"):
        days = int(name.split(":", 1)[1]) if ":" in name else 30
        return DateBucketPartitioner(num_shards, days)
    raise ConfigError(f"unknown partitioner {name!r}: use hash or date[:days]")
