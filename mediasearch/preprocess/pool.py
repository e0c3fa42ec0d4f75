"""Decode workers: encoded bytes -> the vision tower's input, off the event loop and off the GIL.

A photo takes tens of milliseconds to decode even reduced, more than the encoder spends on it on a
GPU, so the indexer decodes on every core: a pool of worker processes (``process``, the default),
each preparing one image at a time with :func:`~mediasearch.preprocess.image.prepare_image_with_size`
(the one preprocessing implementation, with its bounds), and its thumbnail from the same decode
(:mod:`~mediasearch.preprocess.thumbnail`; for images an encoder decodes on its server,
:meth:`DecodePool.thumbnail_of` makes only the thumbnail). Threads (``thread``) share one interpreter:
Pillow releases the GIL while it decodes and resizes, but the conversions and checks between those
calls hold it.

Memory is bounded: at most ``workers`` images are being decoded (each bounded by
:func:`~mediasearch.preprocess.image.max_decode_bytes`), and at most ``workers`` more wait, encoded,
in the pool's queue (:meth:`DecodePool.prepare` waits for a slot). Workers are started with
``spawn`` (never ``fork``: the parent runs gRPC and database threads), so the program's main module
must guard its entry point (``if __name__ == "__main__":``, as console scripts do), and are told by
the kernel to exit when the process that started them dies (a SIGKILLed indexer leaves none behind).

Where worker processes cannot run (no writable ``/dev/shm`` for their semaphores, as in a bare
chroot; workers that die before preparing anything), the pool says so once and uses threads.

Per image, the outcome is as with a direct call: the pixels and upright size, or the reason the image
cannot be used (:class:`~mediasearch.errors.ImageError` and its kin, as text). A worker that dies
(killed by the kernel for memory, a crash in a decoder) fails the images it held with
:class:`~mediasearch.errors.Unavailable` (retried later; a poison image reaches the dead-letter queue
through the queue's receive count) and the pool starts new workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from mediasearch.errors import MediaSearchError, Unavailable
from mediasearch.preprocess.image import DecodeLimits, ImageSpec, prepare_image_with_size
from mediasearch.preprocess.thumbnail import thumbnail_from_bytes

log = logging.getLogger(__name__)

PoolKind = Literal["process", "thread"]
T = TypeVar("T")


@dataclass(frozen=True)
class Prepared:
    """One image's outcome: ``pixels`` and ``size`` (upright width, height), or ``error``; and its
    ``thumbnail`` (WebP) when one was asked for and could be made."""

    pixels: NDArray[np.uint8] | None
    size: tuple[int, int] | None
    error: str | None = None
    thumbnail: bytes | None = None


def cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container's CPU limit sets the quota, not the affinity: a 4-CPU pod on a 64-core node sees 64)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(count, math.ceil(quota))) if quota else count


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None: no quota."""
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").exists():
            q = int((v1 / "cpu.cfs_quota_us").read_text())
            return None if q <= 0 else q / int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None


def prepare(data: bytes, spec: ImageSpec, limits: DecodeLimits, exact: bool, thumbnail: int = 0) -> Prepared:
    """The work of one image, in whichever worker runs it (``thumbnail``: its longest side, 0: none)."""
    try:
        pixels, size, thumb = prepare_image_with_size(
            data,
            spec,
            max_bytes=limits.max_bytes,
            max_pixels=limits.max_pixels,
            max_aspect=limits.max_aspect,
            exact=exact,
            thumbnail=thumbnail,
        )
    except MediaSearchError as exc:
        return Prepared(None, None, str(exc))
    except Exception as exc:  # untrusted bytes: whatever a decoder throws is about this image
        return Prepared(None, None, f"cannot decode image: {exc!r}")
    return Prepared(pixels, size, thumbnail=thumb)


def thumbnail_or_none(data: bytes, limits: DecodeLimits, size: int) -> bytes | None:
    """The thumbnail of encoded bytes, in a worker; None (logged) when it cannot be made."""
    try:
        return thumbnail_from_bytes(data, limits, size)
    except Exception as exc:  # untrusted bytes; a thumbnail never fails the image
        log.debug("no thumbnail: %r", exc)
        return None


_PR_SET_PDEATHSIG = 1


def _worker_started(parent: int) -> None:
    """In each worker: die with the parent (Linux), even if it is killed with SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


class DecodePool:
    """``await pool.prepare(data)``: one image through a worker. Use as ``async with`` (or
    :meth:`close`)."""

    def __init__(
        self,
        spec: ImageSpec,
        limits: DecodeLimits,
        *,
        workers: int = 0,
        kind: PoolKind = "process",
        exact: bool = False,
        thumbnail: int = 0,
    ) -> None:
        self.spec = spec
        self.limits = limits
        self.workers = workers or cores()
        self.kind = kind
        self.exact = exact
        self.thumbnail = thumbnail  # longest side of the thumbnails made with the pixels; 0: none
        self._executor: Executor | None = None
        self._prepared = 0  # images prepared: workers that once worked are not a setup problem
        self._slots = asyncio.Semaphore(2 * self.workers)  # decoding + waiting, encoded, in the queue

    def _start(self) -> Executor:
        if self._executor is None and self.kind == "process":
            try:
                self._executor = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_started,
                    initargs=(os.getpid(),),
                )
            except OSError as exc:  # e.g. no writable /dev/shm for its semaphores
                self._fall_back(f"cannot start decode processes ({exc})")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        return self._executor

    def _fall_back(self, why: str) -> None:
        log.warning("decode pool: %s; decoding in %d threads instead", why, self.workers)
        self.kind = "thread"

    async def prepare(self, data: bytes) -> Prepared:
        """The image's pixels and size (and thumbnail), or why it cannot be used; Unavailable if its
        worker died."""
        return await self._run(prepare, data, self.spec, self.limits, self.exact, self.thumbnail)

    async def thumbnail_of(self, data: bytes) -> bytes | None:
        """Only the thumbnail of encoded bytes (for an image the encoder decodes on its server);
        None when thumbnails are off or it cannot be made. Unavailable if its worker died."""
        if not self.thumbnail:
            return None
        return await self._run(thumbnail_or_none, data, self.limits, self.thumbnail)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            executor = self._start()
            loop = asyncio.get_running_loop()
            try:
                result = await loop.run_in_executor(executor, fn, *args)
            except BrokenProcessPool as exc:
                self._restart(executor)
                if self._prepared:
                    raise Unavailable(f"a decode worker died while preparing this image ({exc})") from exc
                # no worker ever prepared an image here: they cannot run (not this image's fault)
                self._fall_back(f"decode processes died before preparing any image ({exc})")
                executor = self._start()
                result = await loop.run_in_executor(executor, fn, *args)
            self._prepared += 1
            return result

    def _restart(self, broken: Executor) -> None:
        if self._executor is broken:  # the first image to notice replaces the pool
            log.warning("decode pool: a worker died; starting new workers")
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    async def __aenter__(self) -> DecodePool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
