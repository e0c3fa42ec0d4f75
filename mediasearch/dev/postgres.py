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

from sqlalchemy import text
from sqlalchemy.engine import make_url

from mediasearch.metadata.db import make_engine, migrated_engine, normalise_url, translated

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


def _on_server(url: str, what: str, statement: str) -> bool:
    """Run ``statement`` (``{name}``: the database ``url`` names) on the server's ``postgres``
    database, outside a transaction; whether it returned a row."""
    target = make_url(normalise_url(url))
    name = str(target.database)
    admin = make_engine(
        target.set(database="postgres").render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
    )
    try:
        with translated(f"{what} database {name}"), admin.connect() as conn:
            result = conn.execute(text(statement.format(name=name)), {"name": name})
            return result.returns_rows and result.first() is not None
    finally:
        admin.dispose()


def database_exists(url: str) -> bool:
    return _on_server(url, "looking for", "SELECT 1 FROM pg_database WHERE datname = :name")


def create_database(url: str, *, replace: bool = False) -> None:
    """Create the database ``url`` names, unless it exists (``replace``: drop it first)."""
    if replace:
        drop_database(url)
    elif database_exists(url):
        return
    _on_server(url, "creating", 'CREATE DATABASE "{name}"')


def drop_database(url: str) -> None:
    """Drop it, disconnecting whoever is still connected."""
    _on_server(url, "dropping", 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare_database(url: str) -> None:
    """Create the database if it is missing (PostgreSQL) and run the migrations (any backend)."""
    if url.startswith(("postgresql", "postgres")):
        create_database(url)
    with migrated_engine(url):
        pass


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
