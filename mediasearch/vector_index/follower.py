"""Keep a :class:`Shard` in step with the manifest: poll, and on PostgreSQL also LISTEN; keep a
router's index generation current (:class:`GenerationFollower`).

Polling alone meets the 2 s freshness goal with the default 0.5 s interval and works on SQLite;
on PostgreSQL a LISTEN connection wakes the follower as soon as a publish commits, so a new
segment is usually served within one segment-load time. A failed sync (database down, segment
missing or corrupt) is logged and retried; the shard keeps serving its last complete view.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.errors import MediaSearchError, Unavailable
from mediasearch.metadata.db import translated
from mediasearch.metadata.segment_manifest import (
    NOTIFY_CHANNEL,
    ShardManifest,
    live_generation,
    load_shard_manifest,
)
from mediasearch.settings import Settings
from mediasearch.vector_index.generation import Generation, load_generation
from mediasearch.vector_index.shard import Shard
from mediasearch.vector_index.store import SegmentStore

log = logging.getLogger(__name__)


class ManifestFollower:
    """A daemon thread that applies the shard's manifest every ``interval`` seconds (or on NOTIFY)."""

    def __init__(
        self,
        shard: Shard,
        sessions: sessionmaker[Session],
        *,
        interval: float = Settings.defaults().shard_poll_interval_s,
        listen: bool = True,
        on_sync: Callable[[bool], None] | None = None,
    ) -> None:
        self.shard = shard
        self.sessions = sessions
        self.interval = interval
        self.on_sync = on_sync
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._known: ShardManifest | None = None
        self._thread = threading.Thread(target=self._run, name=f"follower-{shard.shard_id}", daemon=True)
        engine = sessions.kw.get("bind")
        self._listen_engine = engine if listen and _is_postgres(engine) else None

    def sync_once(self) -> bool:
        """Read the manifest and apply it; True when the shard's view changed."""
        with self.sessions() as session:
            manifest = load_shard_manifest(session, self.shard.shard_id, self._known)
        changed = self.shard.apply(manifest)
        self._known = manifest
        return changed

    def start(self) -> None:
        self._thread.start()
        if self._listen_engine is not None:
            threading.Thread(target=self._listen, name="manifest-listen", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        failing_since: float | None = None  # an outage is logged when it starts and when it ends
        while not self._stop.is_set():
            try:
                self.sync_once()
                ok = True
            except Unavailable as exc:  # the database or the store: it comes back, the view stays
                if failing_since is None:
                    log.warning(
                        "shard %d: manifest sync failed; serving the last view until it works again: %s",
                        self.shard.shard_id, exc,
                    )  # fmt: skip
                ok = False
            except MediaSearchError:
                log.exception("shard %d: manifest sync failed; serving the last view", self.shard.shard_id)
                ok = False
            if ok and failing_since is not None:
                log.info("shard %d: manifest sync works again after %.1fs", self.shard.shard_id,
                         time.monotonic() - failing_since)  # fmt: skip
            failing_since = None if ok else (failing_since or time.monotonic())
            if self.on_sync is not None:
                self.on_sync(ok)
            self._wake.wait(self.interval)
            self._wake.clear()

    def _listen(self) -> None:
        """Wake the poll loop on NOTIFY; any error just falls back to polling."""
        import psycopg

        assert self._listen_engine is not None
        url = self._listen_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.payload in ("", str(self.shard.shard_id)):
                                self._wake.set()
            except psycopg.Error as exc:
                log.warning("LISTEN %s failed (%s); polling only for now", NOTIFY_CHANNEL, exc)
                self._stop.wait(self.interval * 4)


def _is_postgres(engine: object) -> bool:
    return isinstance(engine, Engine) and engine.dialect.name == "postgresql"


class GenerationFollower:
    """Keeps the live index generation loaded for a router: polls the database, loads a new
    generation's quantizer from the segment store before it is used (a query never waits for a
    load), and keeps the last one through a database outage. ``current()`` costs nothing."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: SegmentStore,
        *,
        interval: float = Settings.defaults().shard_poll_interval_s,
        verify_checksums: bool = True,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.interval = interval
        self.verify_checksums = verify_checksums
        self._generation: Generation | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="generation-follower", daemon=True)

    def current(self) -> Generation | None:
        return self._generation

    def sync_once(self) -> bool:
        """Read the live generation; load it if it changed. True when it changed."""
        with self.sessions() as session, translated("reading the live index generation"):
            record = live_generation(session)
        held = self._generation
        if record is None or (held is not None and held.number == record.number):
            changed = record is None and held is not None
            self._generation = None if record is None else held
            return changed
        self._generation = load_generation(self.store, record, verify_checksums=self.verify_checksums)
        log.info("routing by index generation %d (%d lists)", record.number, record.nlist)
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync_once()
            except MediaSearchError as exc:  # logged; the held generation keeps routing
                log.warning("index generation sync failed; routing by the held one: %s", exc)
