"""The segment manifest through the same SQLAlchemy code on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mediasearch.errors import Conflict
from mediasearch.metadata.db import make_engine, migrate, session_factory
from mediasearch.metadata.segment_manifest import (
    NOTIFY_CHANNEL,
    SegmentRecord,
    add_tombstones,
    load_shard_manifest,
    publish,
)
from tests.support.index import MODEL


@pytest.fixture
def sessions(migrated_engine: Engine) -> sessionmaker[Session]:
    return session_factory(migrated_engine)


def _rec(sid: str, shard: int = 0) -> SegmentRecord:
    return SegmentRecord(sid, shard, f"memory://{sid}", 10, MODEL, "IDMap,Flat")


def test_publish_retire_and_tombstones_round_trip_on_both_backends(sessions: sessionmaker[Session]) -> None:
    publish(sessions, add=[_rec("a"), _rec("b"), _rec("z", shard=3)])
    publish(sessions, add=[_rec("ab")], retire=["a", "b"])
    with sessions.begin() as s:
        add_tombstones(s, [4, 2], shard=0)
        add_tombstones(s, [8], shard=None)
    with sessions() as s:
        m0, m3 = load_shard_manifest(s, 0), load_shard_manifest(s, 3)
    assert [r.segment_id for r in m0.segments] == ["ab"] and m0.segments[0].created is not None
    np.testing.assert_array_equal(m0.tombstones, [2, 4, 8])
    np.testing.assert_array_equal(m3.tombstones, [8])
    assert m0.tombstone_mark[1] == 3


def test_concurrent_retire_conflicts_on_both_backends(sessions: sessionmaker[Session]) -> None:
    publish(sessions, add=[_rec("a"), _rec("b")])
    publish(sessions, add=[_rec("first")], retire=["a", "b"])
    with pytest.raises(Conflict):
        publish(sessions, add=[_rec("second")], retire=["a", "b"])
    with sessions() as s:
        assert [r.segment_id for r in load_shard_manifest(s, 0).segments] == ["first"]


def test_postgres_publish_notifies_listening_shard_servers(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    migrate(engine)
    with psycopg.connect(postgres_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        publish(session_factory(engine), add=[_rec("n", shard=2)])
        payloads = [n.payload for n in listener.notifies(timeout=2.0, stop_after=1)]
    engine.dispose()
    assert payloads == ["2"]


def test_services_starting_together_migrate_a_fresh_postgres_once(postgres_url: str) -> None:
    """Shard servers, indexer and gateway all run the migrations at start; without a lock the
    racing CREATEs failed or deadlocked."""
    import threading

    errors: list[BaseException] = []
    engines = [make_engine(postgres_url) for _ in range(4)]

    def start(engine: Engine) -> None:
        try:
            migrate(engine)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,), daemon=True) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a migration hung"
    assert errors == []
    with engines[0].connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == _head_revision()
    for e in engines:
        e.dispose()


def _head_revision() -> str:
    """The newest migration's revision, from the migrations folder itself."""
    from alembic.script import ScriptDirectory

    from mediasearch.metadata import migrations

    head = ScriptDirectory(str(Path(migrations.__file__).parent)).get_current_head()
    assert head is not None
    return head
