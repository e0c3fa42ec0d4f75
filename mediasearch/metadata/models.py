"""Tables of the metadata database: the segment manifest, tombstones and images (one Base)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
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
    # the index generation whose quantizer placed its vectors (0: the exact layout, no quantizer)
    generation: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")

    __table_args__ = (Index("ix_segments_shard_state", "shard", "state"),)


class GenerationRow(Base):
    """One trained coarse quantizer and its list -> shard assignment (the artifact in the segment
    store). At most one generation is live; a rebalance switches to the next one in the same
    transaction that swaps the segments. ``state``: live -> retired -> deleted."""

    __tablename__ = "index_generations"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    model_version: Mapped[str] = mapped_column(String(128), nullable=False)
    nlist: Mapped[int] = mapped_column(Integer, nullable=False)
    num_shards: Mapped[int] = mapped_column(Integer, nullable=False)
    quantizer_id: Mapped[str] = mapped_column(String(64), nullable=False)
    quantizer_uri: Mapped[str] = mapped_column(String(1024), nullable=False)
    vectors: Mapped[int] = mapped_column(BigInteger, nullable=False)  # trained and placed at the switch
    imbalance: Mapped[float] = mapped_column(Float, nullable=False)  # largest shard / mean at the switch
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    retired: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    dim: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the vectors' width (None: before 0008)
    # the model's name in the model repository (None: the deployment's MEDIASEARCH_MODEL_NAME)
    model_name: Mapped[str | None] = mapped_column(String(128), nullable=True)

    __table_args__ = (Index("ix_index_generations_state", "state"),)


class TombstoneRow(Base):
    """A deleted image id, for one shard or for all (``shard`` NULL). ``seq`` orders them so the
    compactor can drop exactly the tombstones it applied."""

    __tablename__ = "tombstones"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shard: Mapped[int | None] = mapped_column(Integer, nullable=True)
    image_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)

    __table_args__ = (Index("ix_tombstones_shard", "shard"),)


# -- images (issue 6 writes them, the gateway reads them) -------------------------------------
PENDING = "pending"  # row reserved (its id is the vector label), vector not yet published
INDEXED = "indexed"  # vector published in a live segment
FAILED = "failed"  # could not be fetched, decoded or encoded: ``error`` says why
REMOVED = "removed"  # deleted or replaced by a newer version of the key; tombstoned

# SQLite only auto-increments an INTEGER PRIMARY KEY (64-bit there anyway).
_ImageId = BigInteger().with_variant(Integer(), "sqlite")


class ImageRow(Base):
    """One version of one object (bucket, key, etag): one live row each, and any number of removed
    ones (deleted, then uploaded again with the same bytes). Its ``id`` is the vector's label."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(_ImageId, primary_key=True, autoincrement=True)
    bucket: Mapped[str] = mapped_column(String(255), nullable=False)
    key: Mapped[str] = mapped_column(String(1024), nullable=False)
    etag: Mapped[str] = mapped_column(String(128), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    content_type: Mapped[str | None] = mapped_column(String(128), nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    indexed: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    tags: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    model_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    shard: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=PENDING)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the S3 event's per-key sequencer (None: none was sent, e.g. a backfill): orders versions
    sequencer: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        # one live row per version; removed ones stay as history (the same bytes may come back)
        Index(
            "uq_images_live_version",
            "bucket",
            "key",
            "etag",
            unique=True,
            postgresql_where=text("status != 'removed'"),
            sqlite_where=text("status != 'removed'"),
        ),
        Index("ix_images_bucket_key", "bucket", "key"),
        Index("ix_images_status", "status"),
        Index("ix_images_created", "created"),
    )


class ThumbnailRow(Base):
    """The WebP thumbnail of an INDEXED image (issue 18), written by the transaction that publishes
    it and deleted by the one that marks it REMOVED: the table holds live images only. Kept beside
    the metadata (about 8 kB each at 256 px, 8 GB at a million images) so it is transactional with it."""

    __tablename__ = "thumbnails"

    image_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class RemovalRow(Base):
    """The latest ObjectRemoved event handled for a key (one row per key, replaced by later ones).

    A create event whose version was fetched before the delete but is published after it finds
    this row and does not come back; ``sequencer`` orders the two when S3 sent one."""

    __tablename__ = "removals"

    bucket: Mapped[str] = mapped_column(String(255), primary_key=True)
    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    sequencer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    removed: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


# -- API keys (the gateway's callers) -------------------------------------------------------
SCOPES = ("search", "admin")


class ApiKeyRow(Base):
    """One API key. Only its SHA-256 is stored (keys are 256 random bits: no salt or slow hash
    needed, and a lookup stays one dictionary probe); ``prefix`` is its first characters, shown by
    ``keys list`` so a leaked key can be recognised. ``revoked`` set: refused from then on."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(_ImageId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    scopes: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    rate_rps: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: the setting's
    burst: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    last_used: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
