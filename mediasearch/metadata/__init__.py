"""Metadata database: the segment manifest and tombstones (SQLAlchemy 2, SQLite or PostgreSQL).

Re-exported API:
"""

from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.metadata.segment_manifest import (
    SegmentRecord,
    ShardManifest,
    add_tombstones,
    load_shard_manifest,
    publish,
    publish_in,
)

__all__ = [
    "SegmentRecord",
    "ShardManifest",
    "add_tombstones",
    "load_shard_manifest",
    "make_engine",
    "migrate",
    "publish",
    "publish_in",
    "session_factory",
]
