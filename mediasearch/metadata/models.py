"""Tables of the segment manifest. Issue 6 adds ``images`` to the same metadata (same Base)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

LIVE = "live"
RETIRED = "retired"
DELETED = "deleted"  # files garbage-collected; the row stays as history


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every metadata table (one Alembic history for all of them)."""


class SegmentRow(Base):
    """One immutable segment of one shard. Only ``state`` ever changes: live -> retired -> deleted."""

    __tablename__ = "segments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, nullable=False)
    uri: Mapped[str] = mapped_column(String(1024), nullable=False)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    model_version: Mapped[str] = mapped_column(String(128), nullable=False)
    index_type: Mapped[str] = mapped_column(String(128), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default=LIVE)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    retired: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_segments_shard_state", "shard", "state"),)


class TombstoneRow(Base):
    """A deleted image id, for one shard or for all (``shard`` NULL). ``seq`` orders them so the
    compactor can drop exactly the tombstones it applied."""

    __tablename__ = "tombstones"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shard: Mapped[int | None] = mapped_column(Integer, nullable=True)
    image_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)

    __table_args__ = (Index("ix_tombstones_shard", "shard"),)
