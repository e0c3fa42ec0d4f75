"""The runner: composes source -> fetch + decode -> batch encode -> commit -> acknowledge.

Each arrow is a bounded asyncio queue, so a slow stage pushes back on the ones before it (the
source stops receiving when the fetch queue is full; nothing is buffered without bound). The stages
overlap: while a batch is being encoded the next one is downloaded and decoded, and the previous
one is being written and committed, so the encoder is never waiting for I/O. Blocking work runs in
thread pools (boto3, file reads, the database, segment writes; Pillow decodes in its own pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from mediasearch.encoders.base import Encoder
from mediasearch.encoders.image_bytes import probe_image
from mediasearch.errors import Conflict, MediaSearchError, ModelChanged, NotFound
from mediasearch.indexer.commit import Committer, stages
from mediasearch.indexer.dual_write import ShadowEncoder
from mediasearch.indexer.events import ObjectEvent
from mediasearch.indexer.items import IndexReport, Item
from mediasearch.indexer.metrics import IndexerMetrics
from mediasearch.indexer.source import Delivery, Source
from mediasearch.objects import ObjectReader, StoredObject
from mediasearch.preprocess.image import DecodeLimits
from mediasearch.preprocess.pool import DecodePool, PoolKind
from mediasearch.settings import FromSettings, Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
ProgressCallback = Callable[[IndexReport, "int | None"], None]
_END: Any = object()


@dataclass(frozen=True)
class PipelineOptions(FromSettings):
    """How the stages run (``MEDIASEARCH_INDEXER_*``, the image limits)."""

    batch_size: int
    batch_wait_s: float
    fetch_concurrency: int
    queue_items: int
    commit_max_items: int
    max_image_bytes: int
    max_image_pixels: int
    max_image_aspect: float = 500.0
    decode_workers: int = 0  # 0: one per core (preprocess/pool.py)
    decode_pool: PoolKind = "process"
    decode_exact: bool = False
    thumbnail_size: int = 256  # longest side of the stored thumbnails (0: none)
    stop_grace_s: float = 20.0  # after stop: finish what is held for this long, then release the rest
    encode_inflight: int = 2  # batches in the encoder at once (keeps Triton busy during transfers)
    heartbeat_s: float = 5.0  # how often in-flight deliveries are kept invisible (at most)

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineOptions:
        return cls(
            batch_size=settings.indexer_batch_size,
            batch_wait_s=settings.indexer_batch_wait_ms / 1000.0,
            fetch_concurrency=settings.indexer_fetch_concurrency,
            queue_items=settings.indexer_queue_items,
            commit_max_items=settings.indexer_commit_max_items,
            decode_workers=settings.image_decode_workers,
            decode_pool=settings.image_decode_pool,
            decode_exact=settings.image_decode_exact,
            thumbnail_size=settings.thumbnail_size,
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_image_aspect=settings.max_image_aspect,
            stop_grace_s=settings.indexer_stop_grace_s,
        )


class Pipeline:
    """One run over a source. ``await run()`` returns when the source is exhausted (or ``stop`` is
    set, or it stayed idle ``idle_exit_s``) and every received delivery is committed or retried."""

    def __init__(
        self,
        source: Source,
        objects: ObjectReader,
        encoder: Encoder,
        committer: Committer,
        options: PipelineOptions | None = None,
        *,
        progress: ProgressCallback | None = None,
        metrics: IndexerMetrics | None = None,
        shadow: ShadowEncoder | None = None,
    ) -> None:
        self.shadow = shadow  # dual write: the model of a generation being built, when there is one
        self.source = source
        self.objects = objects
        self.encoder = encoder
        self.committer = committer
        self.options = options or PipelineOptions.from_settings(Settings.defaults())
        self.progress = progress
        self.metrics = metrics or IndexerMetrics()
        self.report = IndexReport()
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, stop: asyncio.Event | None = None, idle_exit_s: float | None = None) -> IndexReport:
        o = self.options
        self._loop = asyncio.get_running_loop()
        self._io = ThreadPoolExecutor(o.fetch_concurrency + 4, thread_name_prefix="indexer-io")
        # the gateway's bounded path (reduced decoding, every intermediate bounded), so a hostile
        # object in the bucket costs the indexer what it would cost the gateway
        self._limits = DecodeLimits(o.max_image_bytes, o.max_image_pixels, o.max_image_aspect)
        self._decode = DecodePool(
            self.encoder.image_spec,
            self._limits,
            workers=o.decode_workers,
            kind=o.decode_pool,
            exact=o.decode_exact,
            thumbnail=o.thumbnail_size,
        )
        self._commit_pool = ThreadPoolExecutor(1, thread_name_prefix="indexer-commit")
        q_fetch: asyncio.Queue[Any] = asyncio.Queue(o.queue_items)
        q_ready: asyncio.Queue[Any] = asyncio.Queue(o.queue_items)
        q_commit: asyncio.Queue[Any] = asyncio.Queue(max(2, o.commit_max_items // o.batch_size))
        stop = stop or asyncio.Event()
        done = asyncio.Event()
        try:
            workers = [
                asyncio.create_task(self._fetch_loop(q_fetch, q_ready)) for _ in range(o.fetch_concurrency)
            ]
            tasks = [
                asyncio.create_task(self._receive_loop(q_fetch, stop, idle_exit_s)),
                asyncio.create_task(self._close_after(workers, q_ready)),
                asyncio.create_task(self._encode_loop(q_ready, q_commit)),
                asyncio.create_task(self._commit_loop(q_commit)),
            ]
            beat = asyncio.create_task(self._heartbeat_loop(done))
            try:
                await self._until_drained(asyncio.gather(*tasks, *workers), stop)
            finally:
                done.set()
                await beat
        finally:
            for pool in (self._io, self._commit_pool):
                pool.shutdown(wait=True, cancel_futures=True)
            self._decode.close()
            self.report.finished = time.monotonic()
        return self.report

    async def _until_drained(self, stages: asyncio.Future[Any], stop: asyncio.Event) -> None:
        """The stages until they end. Once ``stop`` is set they finish what they hold for at most
        ``stop_grace_s``; then they are cancelled and the deliveries not yet acknowledged are
        released to other workers (a commit already running still completes: its events, delivered
        again, are then skipped as done)."""
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({stages, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not stages.done():
                try:
                    await asyncio.wait_for(asyncio.shield(stages), self.options.stop_grace_s)
                except TimeoutError:
                    stages.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await stages
                    released = await self._blocking(self._io, self.source.release_in_flight)
                    log.warning(
                        "indexer: stopping after %.0f s with work unfinished; released %d messages "
                        "to other workers", self.options.stop_grace_s, released,
                    )  # fmt: skip
                    return
            await stages  # re-raises a stage's error
        finally:
            stopping.cancel()

    async def _blocking(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        assert self._loop is not None
        return await self._loop.run_in_executor(pool, fn, *args)

    # -- source ---------------------------------------------------------------------------------
    async def _receive_loop(
        self, q_fetch: asyncio.Queue[Any], stop: asyncio.Event, idle_exit_s: float | None
    ) -> None:
        last_activity, backoff = time.monotonic(), 1.0
        pause, seen = 0.0, (0, 0)  # (retried, processed) as of the last receive
        try:
            while not stop.is_set():
                retried, processed = self.report.retried, self.report.processed
                if processed > seen[1]:
                    pause = 0.0
                elif retried > seen[0]:  # everything that finished since then failed: an outage
                    pause = min(max(1.0, pause * 2), 30.0)
                    log.warning(
                        "indexer: none of the last %d events could be processed; waiting %.0fs "
                        "before receiving more", retried - seen[0], pause,
                    )  # fmt: skip
                    seen = (retried, processed)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), pause)
                    continue
                seen = (retried, processed)
                room = max(1, min(10, q_fetch.maxsize - q_fetch.qsize()))
                try:
                    deliveries = await self._blocking(self._io, self.source.receive, room)
                except MediaSearchError as exc:  # the queue is unreachable: keep trying, slowly
                    log.warning("indexer: receiving failed, retrying in %.0fs: %s", backoff, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 1.0
                if deliveries is None:
                    break
                if deliveries or self._in_flight:
                    last_activity = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - last_activity >= idle_exit_s:
                    log.info("indexer: idle for %.0fs, stopping", idle_exit_s)
                    break
                empty = [d for d in deliveries if not d.events]
                if empty:  # test events and ignored event types: nothing to record
                    await self._blocking(self._io, self.source.ack, empty)
                for delivery in deliveries:
                    for event in delivery.events:
                        self._in_flight += 1
                        self.metrics.in_flight.inc()
                        await q_fetch.put(Item(delivery, event))
        finally:
            for _ in range(self.options.fetch_concurrency):
                await q_fetch.put(_END)

    async def _heartbeat_loop(self, done: asyncio.Event) -> None:
        interval = min(self.options.heartbeat_s, self.source.heartbeat_s or self.options.heartbeat_s)
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), interval)
            except TimeoutError:
                try:
                    await self._blocking(self._io, self.source.heartbeat)
                except MediaSearchError as exc:  # the queue is unreachable: try at the next beat
                    log.warning("indexer: extending the visibility of messages in flight failed: %s", exc)

    # -- fetch + decode -------------------------------------------------------------------------
    async def _fetch_loop(self, q_fetch: asyncio.Queue[Any], q_ready: asyncio.Queue[Any]) -> None:
        while (item := await q_fetch.get()) is not _END:
            await self._prepare(item)
            await q_ready.put(item)

    async def _close_after(self, workers: list[asyncio.Task[None]], q_ready: asyncio.Queue[Any]) -> None:
        await asyncio.gather(*workers, return_exceptions=True)
        await q_ready.put(_END)

    async def _prepare(self, item: Item) -> None:
        ev = item.event
        try:
            if ev.kind == "removed":  # nothing to read: the commit orders it against the key's versions
                return
            if ev.etag and await self._done(ev, ev.etag):
                item.outcome = "duplicate"
                return
            with self.metrics.timed("fetch"):
                fetched = await self._blocking(self._io, self._get, ev)
            item.fetched = fetched
            if not ev.etag and await self._done(ev, fetched.etag):
                item.outcome = "duplicate"
                return
        except NotFound as exc:
            log.info("indexer: skipping %s: %s", item.uri, exc)
            item.outcome = "gone"
            return
        except Conflict as exc:
            log.info("indexer: skipping %s: %s", item.uri, exc)
            item.outcome = "stale"
            return
        except MediaSearchError as exc:
            log.warning("indexer: %s will be retried: %s", item.uri, exc)
            item.outcome = "retry"
            return
        if fetched.error is not None:
            item.error = fetched.error
            return
        if self.encoder.accepts_encoded_images and await self._to_server(item, fetched):
            return
        with self.metrics.timed("decode"):
            try:
                prepared = await self._decode.prepare(fetched.data or b"")
            except MediaSearchError as exc:  # its worker died: try again later
                log.warning("indexer: %s will be retried: %s", item.uri, exc)
                item.outcome = "retry"
                return
            finally:
                item.fetched = _without_data(fetched)
        item.error = prepared.error
        item.pixels = prepared.pixels
        item.thumbnail = prepared.thumbnail
        if prepared.size is not None:
            item.width, item.height = prepared.size

    async def _to_server(self, item: Item, fetched: StoredObject) -> bool:
        """The encoder decodes on its server (Triton's bytes ensemble, DALI on the GPU): keep the
        file for it when its header qualifies (checked with the same limits); False: decode here."""
        try:
            probe = await self._blocking(self._io, probe_image, fetched.data or b"", self._limits)
        except MediaSearchError as exc:
            item.error = str(exc)
            item.fetched = _without_data(fetched)
            return True
        if not probe.gpu:
            return False
        item.encoded, (item.width, item.height) = fetched.data, (probe.width, probe.height)
        item.fetched = _without_data(fetched)
        try:  # the server decodes for the encoder; the thumbnail is made by the decode workers
            item.thumbnail = await self._decode.thumbnail_of(item.encoded or b"")
        except MediaSearchError as exc:  # its worker died: the image is indexed without one
            log.debug("indexer: no thumbnail for %s: %s", item.uri, exc)
        return True

    def _get(self, ev: ObjectEvent) -> StoredObject:
        return self.objects.get(ev.bucket, ev.key, if_match=ev.etag)

    async def _done(self, ev: ObjectEvent, etag: str) -> bool:
        done: bool = await self._blocking(
            self._io, self.committer.already_done, ev.bucket, ev.key, etag, ev.sequencer
        )
        return done

    # -- encode ---------------------------------------------------------------------------------
    async def _encode_loop(self, q_ready: asyncio.Queue[Any], q_commit: asyncio.Queue[Any]) -> None:
        o = self.options
        gate = asyncio.Semaphore(o.encode_inflight)
        running: set[asyncio.Task[None]] = set()
        ended = False
        while not ended:
            first = await q_ready.get()
            if first is _END:
                break
            batch, pixels = [first], int(_ready(first))
            deadline = time.monotonic() + o.batch_wait_s
            while pixels < o.batch_size:
                try:
                    nxt = await asyncio.wait_for(q_ready.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if nxt is _END:
                    ended = True
                    break
                batch.append(nxt)
                pixels += _ready(nxt)
            await gate.acquire()
            task = asyncio.create_task(self._encode_batch(batch, q_commit, gate))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running)
        await q_commit.put(_END)

    async def _encode_batch(
        self, batch: list[Item], q_commit: asyncio.Queue[Any], gate: asyncio.Semaphore
    ) -> None:
        import numpy as np

        try:
            todo = [it for it in batch if it.pixels is not None]
            files = [it for it in batch if it.encoded is not None]
            if todo or files:
                self.metrics.batch.observe(len(todo) + len(files))
                try:
                    with self.metrics.timed("encode"):
                        if todo:
                            pixels = np.stack([it.pixels for it in todo if it.pixels is not None])
                            vectors = await self.encoder.encode_pixels(pixels)
                            for it, vec in zip(todo, vectors, strict=True):
                                it.vector = vec
                            await self._dual_write(todo, pixels=pixels)
                        if files:  # decoded by the encoder's server; a bad file fails alone
                            got = await self.encoder.encode_images([it.encoded or b"" for it in files])
                            for it, vec, err in zip(files, got.vectors, got.errors, strict=True):
                                it.vector, it.error = (vec, None) if err is None else (None, str(err))
                            await self._dual_write([it for it in files if it.vector is not None])
                except MediaSearchError as exc:
                    log.warning(
                        "indexer: encoding %d images failed, will retry: %s", len(todo) + len(files), exc
                    )
                    for it in (*todo, *files):
                        it.outcome, it.vector = "retry", None
                for it in (*todo, *files):
                    it.pixels = it.encoded = None
        finally:
            gate.release()
        await q_commit.put(batch)

    async def _dual_write(self, items: list[Item], *, pixels: Any = None) -> None:
        """The same images through the model of the generation being built (if any): a failure
        leaves them out of it (the reindex, run again, takes them), never fails them."""
        shadow = await self.shadow.current() if self.shadow is not None and items else None
        if shadow is None:
            return
        try:
            if pixels is not None:
                vectors = list(await shadow.encoder.encode_pixels(pixels))
            else:
                got = await shadow.encoder.encode_images([it.encoded or b"" for it in items])
                vectors = [v if e is None else None for v, e in zip(got.vectors, got.errors, strict=True)]
        except MediaSearchError as exc:
            log.warning("indexer: %d images not written to generation %d: %s", len(items), shadow.number, exc)
            return
        for it, vec in zip(items, vectors, strict=True):
            it.shadow = (shadow.number, shadow.encoder.model_version, vec) if vec is not None else None
            it.shadow_kept = shadow.kept

    # -- commit + acknowledge ------------------------------------------------------------------
    async def _commit_loop(self, q_commit: asyncio.Queue[Any]) -> None:
        ended = False
        while not ended:
            batch = await q_commit.get()
            if batch is _END:
                break
            items = list(batch)
            while len(items) < self.options.commit_max_items:
                try:
                    more = q_commit.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if more is _END:
                    ended = True
                    break
                items.extend(more)
            await self._commit(items)

    async def _commit(self, items: list[Item]) -> None:
        try:
            with self.metrics.timed("commit"):
                await self._blocking(self._commit_pool, self.committer.commit, items)
        except ModelChanged:
            raise  # a switch to another model: this run stops (its deliveries come back unacked)
        except (MediaSearchError, OSError) as exc:  # database, store or disk: the events come back later
            log.warning(
                "indexer: committing %d events failed; they will be retried: %s", len(items), exc,
                exc_info=not isinstance(exc, MediaSearchError),  # an outage needs no traceback
            )  # fmt: skip
            for it in items:
                if it.outcome not in ("duplicate", "gone", "stale"):
                    it.outcome = "retry"
        ack: list[Delivery] = []
        retry: list[Delivery] = []
        for it in items:
            self.report.count(it)
            self.metrics.finished(it.outcome)
            d = it.delivery
            d.done += 1
            d.retry = d.retry or it.outcome == "retry"
            if d.done == len(d.events):
                (retry if d.retry else ack).append(d)
        try:
            if ack:
                await self._blocking(self._io, self.source.ack, ack)
            if retry:
                await self._blocking(self._io, self.source.retry, retry)
        except MediaSearchError as exc:  # not acknowledged: redelivered, then skipped as a duplicate
            log.warning(
                "indexer: acknowledging %d deliveries (returning %d) failed; they come back after "
                "their visibility timeout: %s", len(ack), len(retry), exc,
            )  # fmt: skip
        self._in_flight -= len(items)
        self.metrics.in_flight.dec(len(items))
        if ack:
            stages.info("indexer stage=acked deliveries=%d t=%.3f", len(ack), time.time())
        if self.progress is not None:
            self.progress(self.report, self.source.total)


def _ready(item: Item) -> bool:
    """Whether the item goes to the encoder (decoded pixels, or the file for a decoding server)."""
    return item.pixels is not None or item.encoded is not None


def _without_data(fetched: Any) -> Any:
    from dataclasses import replace

    return replace(fetched, data=None)
