"""The micro-batcher's behaviour, watched through the fake encoder (no model, no threads)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mediasearch.encoders import FakeEncoder, MicroBatcher
from mediasearch.encoders.fake import fake_vector
from mediasearch.errors import ImageError, InvalidInput, ModelError, Overloaded, Unavailable


def run(test: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    return asyncio.run(test(*args, **kwargs))


async def with_fake(body: Callable[[FakeEncoder], Awaitable[Any]], **options: Any) -> Any:
    async with FakeEncoder(**options) as enc:
        assert isinstance(enc, FakeEncoder)
        return await body(enc)


def png(color: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_concurrent_text_calls_share_one_pass_when_they_arrive_together() -> None:
    async def body(enc: FakeEncoder) -> None:
        await asyncio.gather(*(enc.encode_texts([f"query {i}"]) for i in range(8)))
        assert [len(lengths) for _, lengths in enc.passes] == [8]

    run(with_fake, body, max_batch=8, max_wait_s=0.05)


def test_passes_never_exceed_max_batch_when_more_callers_wait() -> None:
    async def body(enc: FakeEncoder) -> None:
        await asyncio.gather(*(enc.encode_texts([f"query {i}"]) for i in range(21)))
        sizes = [len(lengths) for _, lengths in enc.passes]
        assert max(sizes) <= 8 and sum(sizes) == 21

    run(with_fake, body, max_batch=8, max_wait_s=0.05)


def test_lone_request_on_an_idle_encoder_runs_at_once_without_waiting_for_batch_mates() -> None:
    async def body(enc: FakeEncoder) -> None:
        # the batching window is a minute: a request that waited for batch-mates would time out
        await asyncio.wait_for(enc.encode_texts(["alone"]), 20)
        assert [len(lengths) for _, lengths in enc.passes] == [1]

    run(with_fake, body, max_batch=8, max_wait_s=60.0)


def test_request_arriving_while_a_pass_runs_waits_max_wait_for_batch_mates() -> None:
    sizes: list[int] = []

    async def slow(items: list[str]) -> list[str]:
        sizes.append(len(items))
        await asyncio.sleep(0.3)
        return items

    async def body() -> None:
        # a free slot is left for the second request: only the window makes it wait for the third
        batcher = MicroBatcher(slow, max_batch=8, max_wait_s=0.1, max_inflight=2)
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await asyncio.sleep(0.01)  # the first pass is running now
        second = asyncio.ensure_future(batcher.submit(["second"]))
        await asyncio.sleep(0.03)
        await asyncio.gather(first, second, batcher.submit(["third"]))  # within the second's window
        await batcher.close()

    run(body)
    assert sizes == [1, 2]


def test_requests_arriving_during_a_pass_form_the_next_batch() -> None:
    async def body(enc: FakeEncoder) -> None:
        first = asyncio.ensure_future(enc.encode_texts(["first"]))
        await asyncio.sleep(0.02)  # the first pass is running now
        await asyncio.gather(first, *(enc.encode_texts([f"later {i}"]) for i in range(5)))
        assert [len(lengths) for _, lengths in enc.passes] == [1, 5]

    run(with_fake, body, max_batch=8, max_wait_s=0.0, pass_seconds=0.1)


def test_results_follow_input_order_when_callers_share_a_pass() -> None:
    texts = [f"a photo of thing number {i}" for i in range(6)]

    async def body(enc: FakeEncoder) -> None:
        outs = await asyncio.gather(enc.encode_texts(texts[:4]), enc.encode_texts(texts[4:]))
        got = np.concatenate(outs)
        want = np.stack([fake_vector(t.encode(), enc.dim) for t in texts])
        np.testing.assert_array_equal(got, want)
        assert len(enc.passes) == 1

    run(with_fake, body, max_batch=16, max_wait_s=0.05)


def test_text_batch_is_split_by_length_when_padding_costs_more_than_a_pass() -> None:
    long_query = " ".join(["word"] * 60)

    async def body(enc: FakeEncoder) -> None:
        await asyncio.gather(*(enc.encode_texts([q]) for q in ["a b", "c d", "e f g", long_query]))
        assert sorted(lengths for _, lengths in enc.passes) == [[4, 4, 5], [62]]

    run(with_fake, body, max_batch=8, max_wait_s=0.05, pass_cost_tokens=16)


def test_text_batch_stays_whole_when_splitting_is_disabled() -> None:
    async def body(enc: FakeEncoder) -> None:
        await asyncio.gather(*(enc.encode_texts([q]) for q in ["a b", " ".join(["w"] * 60)]))
        assert len(enc.passes) == 1

    run(with_fake, body, max_batch=8, max_wait_s=0.05, pass_cost_tokens=0)


def test_failed_pass_fails_only_its_callers_when_the_next_pass_succeeds() -> None:
    async def body(enc: FakeEncoder) -> None:
        enc.fail_next_pass = True
        with pytest.raises(ModelError, match="injected"):
            await enc.encode_texts(["doomed"])
        assert (await enc.encode_texts(["fine"])).shape == (1, enc.dim)

    run(with_fake, body, max_wait_s=0.0)


def test_empty_query_raises_invalid_input_before_anything_is_queued() -> None:
    async def body(enc: FakeEncoder) -> None:
        with pytest.raises(InvalidInput):
            await enc.encode_texts(["ok", "   "])
        assert enc.passes == []

    run(with_fake, body)


def test_encoding_nothing_returns_an_empty_matrix_without_a_pass() -> None:
    async def body(enc: FakeEncoder) -> None:
        assert (await enc.encode_texts([])).shape == (0, enc.dim)
        assert (await enc.encode_images([])).vectors.shape == (0, enc.dim)
        assert enc.passes == []

    run(with_fake, body)


def test_corrupt_image_fails_only_itself_when_batched_with_good_images() -> None:
    good_a, good_b = png((200, 30, 30)), png((10, 10, 240), (9, 31))
    truncated = good_a[: len(good_a) // 2]

    async def body(enc: FakeEncoder) -> None:
        result = await enc.encode_images([good_a, b"not an image", truncated, b"", good_b])
        assert [e is None for e in result.errors] == [True, False, False, False, True]
        assert all(isinstance(e, ImageError) for e in result.errors[1:4])
        assert result.ok.tolist() == [True, False, False, False, True]
        np.testing.assert_allclose(np.linalg.norm(result.vectors[[0, 4]], axis=1), 1.0, rtol=1e-6)
        assert not result.vectors[1:4].any()
        assert [len(lengths) for tower, lengths in enc.passes if tower == "vision"] == [2]
        with pytest.raises(ImageError, match="image 1"):
            result.raise_first()

    run(with_fake, body)


def test_encode_images_decodes_off_the_event_loop_thread() -> None:
    import threading

    seen: list[str] = []

    class Spy(FakeEncoder):
        def _prepare_sync(self, data: bytes) -> Any:
            seen.append(threading.current_thread().name)
            return super()._prepare_sync(data)

    async def body() -> None:
        async with Spy() as enc:
            await enc.encode_images([png((1, 2, 3))])
        assert seen and all(name != threading.main_thread().name for name in seen)

    run(body)


# -- MicroBatcher directly -------------------------------------------------------------------


def test_at_most_max_inflight_passes_run_at_once_when_callers_keep_coming() -> None:
    running, peak = 0, 0

    async def slow_double(items: list[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.03)
        running -= 1
        return [2 * i for i in items]

    async def body() -> None:
        batcher = MicroBatcher(slow_double, max_batch=2, max_wait_s=0.0, max_inflight=2)
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(10)))
        assert [r[0] for r in results] == [2 * i for i in range(10)]
        assert peak == 2
        await batcher.close()

    run(body)


def test_submit_raises_overloaded_when_the_queue_is_full() -> None:
    async def never(items: list[int]) -> list[int]:
        await asyncio.sleep(10)
        return items

    async def body() -> None:
        batcher = MicroBatcher(never, max_batch=1, max_wait_s=0.0, max_queue=3)
        waiting = asyncio.ensure_future(batcher.submit([1, 2, 3]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="limit 3"):
            await batcher.submit([4])
        await batcher.close()
        with pytest.raises(Unavailable):
            await waiting

    run(body)


def test_cancelled_callers_items_are_skipped_when_their_pass_has_not_started() -> None:
    ran: list[list[int]] = []

    async def record(items: list[int]) -> list[int]:
        ran.append(items)
        await asyncio.sleep(0.02)
        return items

    async def body() -> None:
        batcher = MicroBatcher(record, max_batch=4, max_wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.005)  # [1] is running
        gone = asyncio.ensure_future(batcher.submit([2]))
        kept = asyncio.ensure_future(batcher.submit([3]))
        await asyncio.sleep(0)
        gone.cancel()
        assert await kept == [3] and await first == [1]
        assert ran == [[1], [3]]
        await batcher.close()

    run(body)


def test_close_fails_waiting_callers_with_unavailable() -> None:
    async def slow(items: list[int]) -> list[int]:
        await asyncio.sleep(10)
        return items

    async def body() -> None:
        batcher = MicroBatcher(slow, max_batch=1, max_wait_s=0.0, name="test batcher")
        callers = [asyncio.ensure_future(batcher.submit([i])) for i in range(3)]
        await asyncio.sleep(0.01)
        await batcher.close()
        for caller in callers:
            with pytest.raises(Unavailable, match="test batcher"):
                await caller
        with pytest.raises(Unavailable, match="closed"):
            await batcher.submit([9])

    run(body)
