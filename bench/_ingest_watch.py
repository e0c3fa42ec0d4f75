"""When an image becomes searchable, observed from outside as a client would (bench-ingest).

A thread polls every shard server's ``Stats`` (every 0.1 s); for each segment it lists for the first
time it reads the segment's ids from the store (a folder), checks with a ``Search`` (one of the
segment's own vectors, k=10) that the server answers with it, and records that time for all of
the segment's ids. Pause it (``running.clear()``) while it would only disturb a measurement.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np


class Searchable:
    """Polls the shard servers' Stats; records when each image id is first served (see the docstring)."""

    def __init__(self, addresses: list[str], store_root: Path, interval_s: float = 0.1) -> None:
        import grpc

        from mediasearch._proto.mediasearch.v1 import shard_pb2_grpc

        self.channels = [grpc.insecure_channel(a) for a in addresses]
        self.stubs = [shard_pb2_grpc.ShardServiceStub(c) for c in self.channels]
        self.store_root = store_root
        self.interval_s = interval_s
        self.seen: dict[int, float] = {}
        self.segments: set[str] = set()
        self.search_misses = 0
        self.running = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="searchable", daemon=True)

    def start(self) -> None:
        self.running.set()
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.running.set()
        self._thread.join(timeout=10)
        for c in self.channels:
            c.close()

    def _loop(self) -> None:
        from mediasearch._proto.mediasearch.v1 import shard_pb2
        from mediasearch.vector_index.segment import load_vectors

        while not self._stop.is_set():
            self.running.wait()
            for stub in self.stubs:
                try:
                    stats = stub.Stats(shard_pb2.ShardStatsRequest(), timeout=5)
                except Exception:  # a slow answer under load: next round
                    continue
                for sid in stats.segment_ids:
                    if sid in self.segments:
                        continue
                    ids, vectors = load_vectors(self.store_root / sid)
                    query = np.ascontiguousarray(vectors[:1], dtype=np.float32)
                    request = shard_pb2.ShardSearchRequest(queries=query.tobytes(), dim=query.shape[1], k=10)
                    try:
                        hits = stub.Search(request, timeout=5).results[0].ids
                    except Exception:
                        continue
                    if int(ids[0]) not in hits:
                        self.search_misses += 1
                        continue
                    now = time.time()
                    self.segments.add(sid)
                    for i in ids.tolist():
                        self.seen.setdefault(int(i), now)
            self._stop.wait(self.interval_s)
