"""The indexer's decode workers: the same pixels and errors as a direct call, a dead worker costs
only the images it held, the pool's size follows the cores a container may use."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mediasearch.dev.photo_corpus import generate
from mediasearch.errors import Unavailable
from mediasearch.preprocess.image import DecodeLimits, ImageSpec, prepare_image_with_size
from mediasearch.preprocess.pool import DecodePool, PoolKind, Prepared, _cgroup_quota

SPEC = ImageSpec(224, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
LIMITS = DecodeLimits(50 << 20, 64_000_000, 500.0)


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    kinds = ["web-jpeg", "screenshot-png", "webp", "small", "small"]
    return [generate(i, kind)[0] for i, kind in enumerate(kinds)] + [b"not an image at all"]


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_workers_prepare_exactly_what_a_direct_call_prepares_and_report_bad_images_alike(
    images: list[bytes], kind: PoolKind
) -> None:
    async def run() -> list:
        async with DecodePool(SPEC, LIMITS, workers=2, kind=kind) as pool:
            return list(await asyncio.gather(*(pool.prepare(d) for d in images)))

    results = asyncio.run(run())
    for data, got in zip(images[:-1], results[:-1], strict=True):
        pixels, size, _ = prepare_image_with_size(data, SPEC)
        assert got.error is None and got.size == size
        assert got.pixels is not None and np.array_equal(got.pixels, pixels)
    assert results[-1].pixels is None and "not an image" in (results[-1].error or "")


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_workers_asked_for_thumbnails_return_them_with_the_same_pixels(
    images: list[bytes], kind: PoolKind
) -> None:
    async def run() -> tuple[list[Prepared], list[bytes | None]]:
        async with DecodePool(SPEC, LIMITS, workers=2, kind=kind, thumbnail=128) as pool:
            prepared = await asyncio.gather(*(pool.prepare(d) for d in images))
            alone = await asyncio.gather(*(pool.thumbnail_of(d) for d in images))
            return list(prepared), list(alone)

    prepared, alone = asyncio.run(run())
    for data, got, only in zip(images[:-1], prepared[:-1], alone[:-1], strict=True):
        pixels, size, thumb = prepare_image_with_size(data, SPEC, thumbnail=128)
        assert got.pixels is not None and np.array_equal(got.pixels, pixels) and got.size == size
        assert got.thumbnail == thumb and thumb is not None
        assert max(Image.open(io.BytesIO(thumb)).size) == min(128, max(size))
        assert only is not None and Image.open(io.BytesIO(only)).size == Image.open(io.BytesIO(thumb)).size
    assert prepared[-1].thumbnail is None and prepared[-1].error  # a bad image: no thumbnail either
    assert alone[-1] is None


def test_a_pool_without_thumbnails_makes_none() -> None:
    data = generate(1, "small")[0]

    async def run() -> tuple[Prepared, bytes | None]:
        async with DecodePool(SPEC, LIMITS, workers=1, kind="thread") as pool:
            return await pool.prepare(data), await pool.thumbnail_of(data)

    got, alone = asyncio.run(run())
    assert got.pixels is not None and got.thumbnail is None and alone is None


def test_a_phone_photo_stored_sideways_comes_out_upright_on_both_paths() -> None:
    for index in range(40):  # the first phone photo of the generator with an orientation tag
        data, item = generate(index, "phone-jpeg")
        if item.orientation != 1:
            break
    assert item.orientation in (6, 8)

    async def run(exact: bool) -> tuple[int, int] | None:
        async with DecodePool(SPEC, LIMITS, workers=1, exact=exact) as pool:
            return (await pool.prepare(data)).size

    assert asyncio.run(run(False)) == asyncio.run(run(True)) == (3000, 4000)


def test_a_worker_killed_mid_image_fails_that_image_as_unavailable_and_the_pool_recovers(
    images: list[bytes],
) -> None:
    big = generate(0, "phone-jpeg")[0]

    async def run() -> None:
        async with DecodePool(SPEC, LIMITS, workers=1, exact=True) as pool:
            assert (await pool.prepare(images[0])).error is None  # the workers run here
            (pid,) = list(pool._executor._processes)  # type: ignore[union-attr]
            task = asyncio.create_task(pool.prepare(big))  # a full 12 Mpx decode: a few hundred ms
            await asyncio.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(Unavailable, match="decode worker died"):
                await task
            again = await pool.prepare(images[0])
            assert again.error is None and again.pixels is not None

    asyncio.run(run())


def test_closing_the_pool_leaves_no_worker_behind(images: list[bytes]) -> None:
    async def run() -> list[int]:
        pool = DecodePool(SPEC, LIMITS, workers=2)
        await asyncio.gather(*(pool.prepare(d) for d in images[:4]))  # both workers started
        pids = list(pool._executor._processes)  # type: ignore[union-attr]
        pool.close()
        return pids

    pids = asyncio.run(run())
    assert len(pids) == 2
    time.sleep(0.2)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_pool_is_sized_by_the_containers_cpu_quota_not_the_nodes_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("400000 100000\n")  # a pod limited to 4 CPUs (cgroup v2)
    assert _cgroup_quota(tmp_path) == 4.0
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    assert _cgroup_quota(tmp_path) is None


def test_where_worker_processes_cannot_start_the_pool_decodes_in_threads(
    images: list[bytes], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mediasearch.preprocess.pool as pool_module

    def no_semaphores(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")  # what a chroot without /dev/shm gives

    monkeypatch.setattr(pool_module, "ProcessPoolExecutor", no_semaphores)

    async def run() -> tuple[str, object]:
        async with DecodePool(SPEC, LIMITS, workers=2) as pool:
            got = await pool.prepare(images[0])
            return pool.kind, got

    kind, got = asyncio.run(run())
    assert kind == "thread" and got.error is None and got.pixels is not None  # type: ignore[attr-defined]
    assert "decoding in 2 threads instead" in caplog.text
