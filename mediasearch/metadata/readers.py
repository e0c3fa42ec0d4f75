"""Image metadata for the query path: one interface, one implementation per database.

The gateway looks up the rows of a page of results on every search, so this read is on the
latency path and its CPU is taken from the encoder on a shared machine. Two implementations:

- :class:`PgImageReader` (PostgreSQL, cluster mode): psycopg's async connections on the event
  loop, autocommit, one prepared statement keyed by primary key. A lookup of 10 rows is one round
  trip of about 0.3 ms; through a SQLAlchemy session in a worker thread it was about 1.2 ms
  (statement compilation, result processing, BEGIN/ROLLBACK, the thread hop), and under load the
  thread hop also waits for the GIL.
- :class:`SqlImageReader` (any SQLAlchemy URL; SQLite in embedded mode): the shared
  :func:`~mediasearch.metadata.images_repo.lookup` on an autocommit engine in a worker thread.

Both return :class:`ImageRecord`, built by the same ``ImageRecord.from_row``, and keep only
INDEXED rows; :meth:`ImageReader.thumbnail` reads an INDEXED image's thumbnail (one primary-key
probe joined to its row). Unreachable databases raise :class:`Unavailable`.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from mediasearch.errors import Unavailable
from mediasearch.metadata.images_repo import ImageRecord, lookup, lookup_thumbnail, reader
from mediasearch.metadata.models import INDEXED, ImageRow, ThumbnailRow

log = logging.getLogger(__name__)

_COLUMNS = ", ".join(f'"{c.name}"' for c in ImageRow.__table__.columns)
# By primary key only; the status is checked on the rows. A ``status = 'indexed'`` predicate lets
# the planner pick ix_images_status on a freshly loaded table whose statistics are stale, which
# reads the whole index (2 ms at 20k rows, measured) instead of ten primary-key probes.
_BY_ID = f"SELECT {_COLUMNS} FROM {ImageRow.__tablename__} WHERE id = ANY(%s::bigint[])"
_THUMBNAIL = (
    f"SELECT t.data FROM {ThumbnailRow.__tablename__} t JOIN {ImageRow.__tablename__} i ON i.id = t.image_id"
    f" WHERE t.image_id = %s::bigint AND i.status = '{INDEXED}'"
)


class ImageReader(abc.ABC):
    """Rows of indexed images by id, for the query path."""

    @abc.abstractmethod
    async def get(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        """The INDEXED rows among ``ids`` (others are simply absent), in one query."""

    async def thumbnail(self, image_id: int) -> bytes | None:
        """The WebP thumbnail of an INDEXED image; None when it is not indexed or has none (made
        before thumbnails existed, or thumbnails are off). Readers without thumbnails have none."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional for implementations
        """Release connections."""


class SqlImageReader(ImageReader):
    """Any SQLAlchemy engine, read in a worker thread (SQLite in embedded mode)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = reader(engine)

    async def get(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return {}
        return await asyncio.to_thread(lookup, self.engine, wanted)

    async def thumbnail(self, image_id: int) -> bytes | None:
        return await asyncio.to_thread(lookup_thumbnail, self.engine, int(image_id))


class PgImageReader(ImageReader):
    """PostgreSQL through psycopg's async connections: up to ``max_connections`` lookups at once."""

    def __init__(self, url: str, *, max_connections: int = 4, connect_timeout_s: float = 5.0) -> None:
        parsed = make_url(url).set(drivername="postgresql")
        self._conninfo = parsed.render_as_string(hide_password=False)
        self._where = parsed.render_as_string(hide_password=True)
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def get(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return {}
        async with self._slots:
            rows = await self._read(_BY_ID, wanted)
        records = (ImageRecord.from_row(row) for row in rows)
        return {r.image_id: r for r in records if r.status == INDEXED}

    async def thumbnail(self, image_id: int) -> bytes | None:
        async with self._slots:
            rows = await self._read(_THUMBNAIL, int(image_id))
        return bytes(rows[0].data) if rows else None

    async def _read(self, query: str, param: Any) -> list[Any]:
        """The rows, on an idle connection or a new one. A pooled connection that the server (a
        restart, a proxy's idle timeout) dropped while it sat idle fails with OperationalError:
        the read is idempotent, so it is tried once more on a new connection."""
        if self._closed:
            raise Unavailable("the metadata reader is closed")
        while True:
            pooled = bool(self._idle)
            connection = self._idle.pop() if pooled else await self._connect()
            try:
                cursor = await connection.execute(query, (param,), prepare=True)
                rows = await cursor.fetchall()
            except BaseException as exc:
                await connection.close()  # never reuse a connection in an unknown state
                if pooled and isinstance(exc, psycopg.OperationalError):
                    log.info("metadata connection to %s was dropped (%s); reconnecting", self._where, exc)
                    stale, self._idle = self._idle, []  # the others were probably dropped with it
                    for other in stale:
                        await other.close()
                    continue
                if isinstance(exc, psycopg.Error):
                    raise Unavailable(f"reading image metadata from {self._where}: {exc}") from exc
                raise
            self._idle.append(connection)
            return rows

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                row_factory=namedtuple_row,
                connect_timeout=max(1, round(self._connect_timeout_s)),
            )
        except psycopg.Error as exc:
            raise Unavailable(f"metadata database {self._where} is unreachable: {exc}") from exc

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()


def open_image_reader(engine: Engine) -> ImageReader:
    """The reader for ``engine``'s database: async psycopg on PostgreSQL, SQLAlchemy otherwise."""
    if engine.dialect.name == "postgresql":
        return PgImageReader(engine.url.render_as_string(hide_password=False))
    return SqlImageReader(engine)
