"""PostgreSQL databases for the development harness: created, migrated, thrown away.

The development machines run one PostgreSQL server on 127.0.0.1:5432 (trust authentication;
``.ci/run`` starts it when it is down). ``make up`` creates and migrates its database there, tests
and benchmarks use throwaway databases (dropped with ``FORCE`` afterwards, even while a killed
child still holds a connection).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from mediasearch.metadata.db import make_engine, migrate, normalise_url, translated

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def available(admin_url: str = ADMIN_URL) -> bool:
    """Whether the server answers (a test tier that needs it is skipped otherwise)."""
    engine = make_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def _admin(url: str) -> tuple[Engine, str]:
    """An autocommit engine on the server's ``postgres`` database, and the database ``url`` names."""
    target = make_url(normalise_url(url))
    admin = target.set(database="postgres").render_as_string(hide_password=False)
    return make_engine(admin, isolation_level="AUTOCOMMIT"), str(target.database)


def database_exists(url: str) -> bool:
    admin, name = _admin(url)
    try:
        with translated(f"looking for database {name}"), admin.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            return found.first() is not None
    finally:
        admin.dispose()


def create_database(url: str, *, replace: bool = False) -> None:
    """Create the database ``url`` names, unless it exists (``replace``: drop it first)."""
    if replace:
        drop_database(url)
    elif database_exists(url):
        return
    admin, name = _admin(url)
    try:
        with translated(f"creating database {name}"), admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()


def drop_database(url: str) -> None:
    """Drop it, disconnecting whoever is still connected."""
    admin, name = _admin(url)
    try:
        with translated(f"dropping database {name}"), admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def prepare_database(url: str) -> None:
    """Create the database if it is missing (PostgreSQL) and run the migrations (any backend)."""
    if url.startswith(("postgresql", "postgres")):
        create_database(url)
    engine = make_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()


@contextlib.contextmanager
def throwaway_database(prefix: str = "mediasearch_test", admin_url: str = ADMIN_URL) -> Iterator[str]:
    """A new, empty database on the server of ``admin_url``; yields its URL, drops it afterwards."""
    url = make_url(admin_url).set(database=f"{prefix}_{uuid.uuid4().hex[:10]}")
    rendered = url.render_as_string(hide_password=False)
    create_database(rendered)
    try:
        yield rendered
    finally:
        drop_database(rendered)
