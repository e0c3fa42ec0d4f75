"""Alembic environment: always run from :func:`mediasearch.metadata.db.migrate` with a connection."""

from __future__ import annotations

from alembic import context

from mediasearch.metadata.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through mediasearch.metadata.db.migrate(engine)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
