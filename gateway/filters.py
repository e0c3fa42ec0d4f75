"""Result filters: conditions on an image's metadata, checked in the gateway.

Why the gateway and not the shards: tags, content types, creation times and keys live in the
metadata database, not in the vector segments (segments hold only vectors and ids, and are
immutable, while tags may change). So the query path oversamples: it draws more candidates than
it needs from the shards, looks their metadata up in one batched query, drops those that fail the
filters, and draws again (4x more each round) while it is short and the shards have more; see
:mod:`mediasearch.gateway.query_path`. Filters that match a large fraction of the images cost one round; very
selective filters cost a few rounds up to ``gateway_max_candidates``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mediasearch.errors import InvalidInput
from mediasearch.metadata.images_repo import ImageRecord
from mediasearch.objects import normalize_tag


@dataclass(frozen=True)
class Filters:
    """Every set condition must hold; the empty filter matches everything."""

    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ()
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    bucket: str = ""
    key_prefix: str = ""

    @property
    def empty(self) -> bool:
        return self == Filters()

    def matches(self, image: ImageRecord) -> bool:
        tags = set(image.tags)
        if self.tags_any and not tags.intersection(self.tags_any):
            return False
        if self.tags_all and not tags.issuperset(self.tags_all):
            return False
        if self.content_types and (image.content_type or "") not in self.content_types:
            return False
        if self.created_after is not None and image.created < self.created_after:
            return False
        if self.created_before is not None and image.created >= self.created_before:
            return False
        if self.bucket and image.bucket != self.bucket:
            return False
        return not (self.key_prefix and not image.key.startswith(self.key_prefix))


def filters_from_proto(f: Any) -> Filters:
    """A ``mediasearch.v1.Filters`` message as :class:`Filters` (InvalidInput for values no image
    could have, e.g. a timestamp outside years 1-9999)."""
    return Filters(  # tags as the indexer stores them: "Sunset " finds "sunset"
        tags_any=tuple(normalize_tag(t) for t in f.tags_any),
        tags_all=tuple(normalize_tag(t) for t in f.tags_all),
        content_types=tuple(f.content_types),
        created_after=_time(f, "created_after"),
        created_before=_time(f, "created_before"),
        bucket=f.bucket,
        key_prefix=f.key_prefix,
    )


def _time(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp = getattr(message, name)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidInput(f"filters.{name} is not a valid timestamp: {exc}") from exc
