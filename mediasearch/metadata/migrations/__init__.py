"""Alembic migrations of the metadata database, run programmatically by ``metadata.db.migrate``."""
