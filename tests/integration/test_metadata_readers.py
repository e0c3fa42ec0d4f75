"""The query path's metadata readers: async psycopg on PostgreSQL, SQLAlchemy on SQLite.

Both must return exactly what the shared ``get_images`` returns (INDEXED rows only, as
ImageRecord), and an unreachable database must be Unavailable, not a driver exception.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import Engine, delete, select

from mediasearch.errors import Unavailable
from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.metadata.images_repo import (
    NewImage,
    delete_thumbnails,
    get_images,
    get_thumbnail,
    mark_failed,
    mark_indexed,
    put_thumbnails,
    reserve,
)
from mediasearch.metadata.models import ImageRow, ThumbnailRow
from mediasearch.metadata.readers import PgImageReader, SqlImageReader, open_image_reader

WHEN = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    return migrated_engine


def _rows(engine: Engine) -> tuple[list[int], int, int]:
    """Five indexed rows (one with tags), one failed, one still pending: their ids."""
    sessions = session_factory(engine)
    with sessions.begin() as session:
        images = [
            NewImage("photos", f"k{i}.jpg", f"e{i}", size=100 + i, content_type="image/jpeg", created=WHEN)
            for i in range(7)
        ]
        ids = [r.image_id for r in reserve(session, images)]
    with sessions.begin() as session:
        mark_indexed(session, [(i, i % 2, 64, 48) for i in ids[:5]], model_version="m1", when=WHEN)
        mark_failed(session, ids[5], "not an image")
    return ids[:5], ids[5], ids[6]


def test_the_reader_returns_what_get_images_returns_indexed_rows_only(engine: Engine) -> None:
    indexed, failed, pending = _rows(engine)
    with session_factory(engine)() as session:
        expected = get_images(session, [*indexed, failed, pending])
    assert sorted(expected) == indexed

    async def read() -> dict[int, object]:
        reader = open_image_reader(engine)
        assert isinstance(reader, PgImageReader if engine.dialect.name == "postgresql" else SqlImageReader)
        try:
            first = await reader.get([*indexed, failed, pending, 10**12])
            again = await asyncio.gather(*(reader.get([i]) for i in indexed))  # concurrent lookups
            assert [dict(a) for a in again] == [{i: first[i]} for i in indexed]
            assert await reader.get([]) == {}
            return dict(first)
        finally:
            await reader.close()

    got = asyncio.run(read())
    assert got == expected
    record = expected[indexed[1]]
    assert (record.bucket, record.key, record.width, record.height) == ("photos", "k1.jpg", 64, 48)
    assert record.created == WHEN and record.created.tzinfo is not None
    assert record.model_version == "m1" and record.shard == indexed[1] % 2


def test_a_thumbnail_is_read_only_for_an_indexed_image_and_deleted_with_its_row(engine: Engine) -> None:
    indexed, failed, pending = _rows(engine)
    sessions = session_factory(engine)
    with sessions.begin() as session:  # rows the indexer would never give one: the status decides
        put_thumbnails(session, [(i, b"webp-%d" % i) for i in [*indexed[:2], failed, pending]])

    async def read(ids: list[int]) -> list[bytes | None]:
        reader = open_image_reader(engine)
        try:
            return [await reader.thumbnail(i) for i in ids]
        finally:
            await reader.close()

    ids = [*indexed[:3], failed, pending, 10**12]
    assert asyncio.run(read(ids)) == [
        b"webp-%d" % indexed[0],
        b"webp-%d" % indexed[1],
        None,
        None,
        None,
        None,
    ]
    with sessions() as session:
        assert get_thumbnail(session, indexed[0]) == b"webp-%d" % indexed[0]
    with sessions.begin() as session:
        delete_thumbnails(session, [indexed[0], indexed[2]])  # one without a thumbnail: nothing
    assert asyncio.run(read(indexed[:2])) == [None, b"webp-%d" % indexed[1]]
    with engine.begin() as connection:  # a deleted images row takes its thumbnail (ON DELETE CASCADE)
        connection.execute(delete(ImageRow).where(ImageRow.id == indexed[1]))
        left = set(connection.scalars(select(ThumbnailRow.image_id)))
    assert left == {failed, pending}


def test_an_unreachable_postgresql_is_unavailable() -> None:
    async def read() -> None:
        reader = PgImageReader("postgresql://postgres@127.0.0.1:1/nothing", connect_timeout_s=1)
        try:
            await reader.get([1, 2])
        finally:
            await reader.close()

    with pytest.raises(Unavailable, match="unreachable"):
        asyncio.run(read())


def test_a_pooled_connection_dropped_by_the_server_is_replaced_without_failing_the_lookup(
    postgres_url: str,
) -> None:
    url = postgres_url
    engine = make_engine(url)
    migrate(engine)
    indexed, _, _ = _rows(engine)

    async def read() -> None:
        reader = PgImageReader(url)
        try:
            assert set(await reader.get(indexed)) == set(indexed)
            pids = [c.info.backend_pid for c in reader._idle]
            with psycopg.connect(
                url.replace("/" + url.rsplit("/", 1)[1], "/postgres"), autocommit=True
            ) as admin:
                for pid in pids:  # what a server restart or a proxy's idle timeout does
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert set(await reader.get(indexed)) == set(indexed)  # retried on a new connection
            assert [c.info.backend_pid for c in reader._idle] != pids
        finally:
            await reader.close()

    asyncio.run(read())
    engine.dispose()
