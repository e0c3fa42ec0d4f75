"""Engine factory and migrations: SQLite (embedded mode) and PostgreSQL (cluster) through the same
SQLAlchemy code. sqlalchemy errors are translated into the project's tree here and in
:func:`translated`, so callers never see a driver exception.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.errors import ConfigError, Conflict, MediaSearchError, Unavailable

MIGRATIONS = Path(__file__).with_name("migrations")
CONNECT_TIMEOUT_S = 10
_MIGRATION_LOCK = 0x6D656469  # pg_advisory_xact_lock key: "medi"


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (the only PostgreSQL driver we ship)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the per-backend settings a multi-process deployment needs."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql"):
        kwargs.setdefault("pool_pre_ping", True)  # latency-critical readers may turn it off
        # a host that drops packets fails a connect in 10 s, not the kernel's two minutes of retries
        kwargs.setdefault("connect_args", {"connect_timeout": CONNECT_TIMEOUT_S})
        return create_engine(url, **kwargs)
    raise ConfigError(f"database URL {redact_url(url)!r}: use sqlite:///<file> or postgresql://...")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets shard servers read while the indexer or compactor writes (SQLite's default
    rollback journal blocks readers during a write)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine) -> None:
    """``alembic upgrade head`` programmatically: every service runs it on start (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with translated("migrating the metadata database"), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Services starting together on a fresh database would race to create the tables:
            # one migrates while the others wait here, then find nothing left to do.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    with translated("reading the schema revision"), engine.connect() as conn:
        if not engine.dialect.has_table(conn, "alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextlib.contextmanager
def migrated_engine(url: str, **kwargs: Any) -> Iterator[Engine]:
    """An engine on ``url`` with the migrations run, as every service opens its database;
    disposed when the block ends."""
    engine = make_engine(url, **kwargs)
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn sqlalchemy errors into Conflict (serialisation, deadlock, duplicate key: retry) or
    Unavailable (the database is down, unreachable or refused the statement)."""
    try:
        yield
    except MediaSearchError:
        raise
    except DBAPIError as exc:
        # before OperationalError: psycopg's serialisation failures and deadlocks are operational
        if getattr(exc.orig, "sqlstate", None) in ("40001", "40P01", "23505"):
            raise Conflict(f"{what}: {exc.orig}") from exc
        if isinstance(exc, OperationalError):
            raise Unavailable(f"{what}: the metadata database is unavailable: {exc.orig}") from exc
        raise Unavailable(f"{what}: {exc.orig!r}") from exc
    except SQLAlchemyError as exc:
        raise Unavailable(f"{what}: {exc!r}") from exc


def utc(value: datetime) -> datetime:
    """SQLite hands timestamps back naive; they were written in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
