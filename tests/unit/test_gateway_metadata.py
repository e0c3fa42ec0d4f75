"""The gateway coalesces concurrent metadata lookups into one query per database round."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime

import pytest

from mediasearch.errors import Unavailable
from mediasearch.gateway.query_path import SearchEngine
from mediasearch.metadata.images_repo import ImageRecord
from mediasearch.metadata.readers import ImageReader


def _record(image_id: int) -> ImageRecord:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return ImageRecord(
        image_id, "b", f"k{image_id}", "e", 1, None, 1, 1, now, now, (), "m", 0, "indexed", None
    )


class CountingReader(ImageReader):
    """Knows ids 0..99; each get() takes 20 ms, so lookups arriving meanwhile must wait and merge."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[set[int]] = []
        self.fail = fail
        self.closed = False

    async def get(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        wanted = set(ids)
        self.calls.append(wanted)
        await asyncio.sleep(0.02)
        if self.fail:
            raise Unavailable("metadata database is down")
        return {i: _record(i) for i in wanted if i < 100}

    async def close(self) -> None:
        self.closed = True


def _engine(reader: ImageReader) -> SearchEngine:
    return SearchEngine(encoder=None, router=None, metadata=reader, locator=None)  # type: ignore[arg-type]


def test_concurrent_lookups_share_queries_and_each_gets_only_its_rows() -> None:
    async def run() -> tuple[list[dict[int, ImageRecord]], CountingReader]:
        reader = CountingReader()
        engine = _engine(reader)
        pages = [[10 * p + j for j in range(3)] + [500 + p] for p in range(8)]
        try:
            return list(await asyncio.gather(*(engine._lookup(ids) for ids in pages))), reader
        finally:
            await engine.close()

    results, reader = asyncio.run(run())
    assert [sorted(r) for r in results] == [[10 * p + j for j in range(3)] for p in range(8)]
    assert all(r[i].image_id == i for r in results for i in r)
    # two slots: the first two lookups run at once, the other six wait and go together
    assert len(reader.calls) <= 3
    assert set().union(*reader.calls) == {
        i for p in range(8) for i in [10 * p, 10 * p + 1, 10 * p + 2, 500 + p]
    }
    assert reader.closed


def test_a_failed_lookup_fails_the_searches_it_served() -> None:
    async def run() -> None:
        engine = _engine(CountingReader(fail=True))
        try:
            await asyncio.gather(engine._lookup([1]), engine._lookup([2]))
        finally:
            await engine.close()

    with pytest.raises(Unavailable, match="down"):
        asyncio.run(run())
