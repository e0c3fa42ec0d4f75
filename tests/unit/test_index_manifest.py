"""Segment manifest on SQLite (PostgreSQL: tests/integration/test_shard_manifest_backends.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from mediasearch.errors import Conflict
from mediasearch.metadata.db import make_engine, migrate
from mediasearch.metadata.models import SegmentRow
from mediasearch.metadata.segment_manifest import (
    SegmentRecord,
    add_tombstones,
    load_shard_manifest,
    publish,
    publish_in,
)
from tests.support.index import MODEL, sqlite_sessions


def _rec(sid: str, shard: int = 0, count: int = 10) -> SegmentRecord:
    return SegmentRecord(sid, shard, f"memory://{sid}", count, MODEL, "IDMap,Flat")


def test_published_segments_and_tombstones_show_in_the_shard_manifest(tmp_path: Path) -> None:
    sessions = sqlite_sessions(tmp_path)
    publish(sessions, add=[_rec("a"), _rec("b"), _rec("c", shard=1)])
    with sessions.begin() as s:
        add_tombstones(s, [5, 3], shard=0)
        add_tombstones(s, [9], shard=None)
        add_tombstones(s, [11], shard=1)
    with sessions() as s:
        m = load_shard_manifest(s, 0)
    assert [r.segment_id for r in m.segments] == ["a", "b"]
    assert m.segments[0].model_version == MODEL and m.segments[0].created is not None
    np.testing.assert_array_equal(m.tombstones, [3, 5, 9])


def test_retiring_a_segment_that_is_not_live_conflicts_and_rolls_back_the_whole_publish(
    tmp_path: Path,
) -> None:
    sessions = sqlite_sessions(tmp_path)
    publish(sessions, add=[_rec("a"), _rec("b")])
    publish(sessions, add=[_rec("ab")], retire=["a", "b"])
    with pytest.raises(Conflict):
        publish(sessions, add=[_rec("ab2")], retire=["a", "b"])  # a second compactor, too late
    with sessions() as s:
        assert [r.segment_id for r in load_shard_manifest(s, 0).segments] == ["ab"]
        assert s.get(SegmentRow, "ab2") is None


def test_publish_in_is_part_of_the_callers_transaction(tmp_path: Path) -> None:
    sessions = sqlite_sessions(tmp_path)
    with pytest.raises(RuntimeError), sessions.begin() as s:
        publish_in(s, add=[_rec("x")])
        raise RuntimeError("the indexer's image rows failed")
    with sessions() as s:
        assert s.scalars(select(SegmentRow)).all() == []


def test_manifest_reuses_tombstones_when_unchanged(tmp_path: Path) -> None:
    sessions = sqlite_sessions(tmp_path)
    with sessions.begin() as s:
        add_tombstones(s, [1, 2], shard=0)
    with sessions() as s:
        first = load_shard_manifest(s, 0)
        again = load_shard_manifest(s, 0, first)
    assert again.tombstones is first.tombstones


def test_migrate_again_on_a_database_at_head_keeps_its_rows_and_revision(tmp_path: Path) -> None:
    """Every service migrates on start: a second run must be a no-op, not a failure or a reset."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from mediasearch.metadata.db import MIGRATIONS, session_factory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    publish(session_factory(engine), add=[_rec("kept")])
    migrate(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [head]
    with session_factory(engine)() as s:
        assert [r.id for r in s.scalars(select(SegmentRow))] == ["kept"]
    engine.dispose()
