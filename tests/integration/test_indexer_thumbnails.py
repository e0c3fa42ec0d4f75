"""Thumbnails through the whole ingestion path, on SQLite and PostgreSQL: the indexer stores one per
indexed image in the publishing transaction, both metadata readers serve it, and a replaced,
deleted or pruned image's thumbnail goes with it (the table holds the live images only)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import Engine, select

from mediasearch.indexer.folder import index_folder
from mediasearch.metadata.db import make_engine
from mediasearch.metadata.models import INDEXED, REMOVED, ThumbnailRow
from mediasearch.metadata.readers import PgImageReader, SqlImageReader, open_image_reader
from mediasearch.settings import Settings
from tests.support.index import sessions_for
from tests.support.indexer import indexer_settings, rows


def _photo(seed: int, width: int = 1200, height: int = 900) -> bytes:
    from skimage import data as sk

    base = Image.fromarray(sk.astronaut()).rotate(seed * 37)
    buf = io.BytesIO()
    base.resize((width, height), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, tiny_repository: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    return indexer_settings(
        tmp_path, tiny_repository, url, max_image_bytes=5_000_000, max_image_pixels=20_000_000
    )


def _thumbnails(engine: Engine, ids: list[int]) -> tuple[list[bytes | None], list[bytes | None]]:
    """What each reader gives for ``ids``: the database's own, and SQLAlchemy's on any engine."""

    async def read() -> tuple[list[bytes | None], list[bytes | None]]:
        own, sql = open_image_reader(engine), SqlImageReader(engine)
        assert isinstance(own, PgImageReader if engine.dialect.name == "postgresql" else SqlImageReader)
        try:
            return (
                list(await asyncio.gather(*(own.thumbnail(i) for i in ids))),
                [await sql.thumbnail(i) for i in ids],
            )
        finally:
            await own.close()
            await sql.close()

    return asyncio.run(read())


def _stored(engine: Engine) -> set[int]:
    with engine.connect() as connection:
        return set(connection.scalars(select(ThumbnailRow.image_id)))


def test_indexed_images_have_thumbnails_in_both_readers_and_replaced_or_removed_ones_lose_them(
    settings: Settings, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    files = {"a.jpg": _photo(1), "b.jpg": _photo(2, 900, 1200), "c.jpg": _photo(3), "bad.jpg": b"junk"}
    for name, data in files.items():
        (photos / name).write_bytes(data)
    first = index_folder(settings, photos)
    assert (first.indexed, first.failed) == (3, 1)

    engine = make_engine(settings.database_url)
    try:
        sessions = sessions_for(settings.database_url)
        before = {r.key: r.id for r in rows(sessions)}
        ids = [before[k] for k in ("a.jpg", "b.jpg", "c.jpg", "bad.jpg")] + [10**12]
        own, sql = _thumbnails(engine, ids)
        assert own == sql
        sizes = [Image.open(io.BytesIO(t)).size for t in own[:3] if t is not None]
        assert sizes == [(256, 192), (192, 256), (256, 192)]
        assert all(Image.open(io.BytesIO(t)).format == "WEBP" for t in own[:3] if t is not None)
        assert own[3:] == [None, None]  # a failed image and an unknown id have none
        assert _stored(engine) == {before["a.jpg"], before["b.jpg"], before["c.jpg"]}

        (photos / "a.jpg").write_bytes(_photo(4))  # a new version replaces a.jpg
        (photos / "c.jpg").unlink()  # and c.jpg is deleted
        again = index_folder(settings, photos, prune=True)
        assert (again.indexed, again.removed) == (1, 1)  # c.jpg pruned

        after = {(r.key, r.status): r.id for r in rows(sessions)}
        new_a = after[("a.jpg", INDEXED)]
        assert after[("c.jpg", REMOVED)] == before["c.jpg"]
        own, sql = _thumbnails(engine, [before["a.jpg"], new_a, before["b.jpg"], before["c.jpg"]])
        assert own == sql
        assert own[0] is None and own[1] is not None and own[2] is not None and own[3] is None
        assert _stored(engine) == {new_a, before["b.jpg"]}  # only live images keep a thumbnail
    finally:
        engine.dispose()


def test_with_thumbnails_off_nothing_is_stored(settings: Settings, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(_photo(1))
    off = settings.model_copy(update={"thumbnail_size": 0})
    assert index_folder(off, photos).indexed == 1
    engine = make_engine(settings.database_url)
    try:
        (image_id,) = [r.id for r in rows(sessions_for(settings.database_url))]
        assert _thumbnails(engine, [image_id]) == ([None], [None])
        assert _stored(engine) == set()
    finally:
        engine.dispose()
