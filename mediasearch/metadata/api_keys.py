"""API keys in the metadata database: create (the key is returned once), list, revoke, and the
gateway's reads (every active key by hash) and batched last-use updates.

A key is ``ms_`` + 43 characters of ``secrets.token_urlsafe(32)`` (256 random bits). Only its
SHA-256 is stored: a database dump does not hand out working keys, and because the key is random
a fast hash is enough (salts and slow hashes defend guessable passwords).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mediasearch.errors import Conflict, InvalidInput, NotFound
from mediasearch.metadata.db import translated
from mediasearch.metadata.models import SCOPES, ApiKeyRow, utcnow

KEY_PREFIX = "ms_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ApiKey:
    """A key as the gateway and ``keys list`` see it (never the key itself)."""

    name: str
    key_hash: str
    prefix: str
    scopes: tuple[str, ...]
    rate_rps: float | None
    burst: int | None
    created: datetime
    last_used: datetime | None
    revoked: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    session: Session,
    name: str,
    scopes: Iterable[str],
    *,
    rate_rps: float | None = None,
    burst: int | None = None,
) -> str:
    """Store a new key named ``name``; returns the key (the only time it exists in clear)."""
    if not _NAME.match(name):
        raise InvalidInput(
            f"key name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    wanted = tuple(dict.fromkeys(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if not wanted or unknown:
        raise InvalidInput(f"scope must be one of {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}")
    if rate_rps is not None and rate_rps < 0:
        raise InvalidInput("rate must be >= 0 requests per second (0: unlimited)")
    if burst is not None and burst < 1:
        raise InvalidInput("burst must be at least 1")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKeyRow(
        name=name,
        key_hash=hash_key(key),
        prefix=key[: len(KEY_PREFIX) + 6],
        scopes=list(wanted),
        rate_rps=rate_rps,
        burst=burst,
        created=utcnow(),
    )
    session.add(row)
    with translated("creating an API key"):
        try:
            session.flush()
        except IntegrityError as exc:
            raise Conflict(f"a key named {name!r} exists: revoke it first or pick another name") from exc
    return key


def list_keys(session: Session, *, include_revoked: bool = True) -> list[ApiKey]:
    query = select(ApiKeyRow).order_by(ApiKeyRow.created, ApiKeyRow.id)
    if not include_revoked:
        query = query.where(ApiKeyRow.revoked.is_(None))
    with translated("reading API keys"):
        return [_key(row) for row in session.scalars(query)]


def revoke_key(session: Session, name: str) -> None:
    with translated("reading API keys"):
        row = session.scalars(select(ApiKeyRow).where(ApiKeyRow.name == name)).one_or_none()
    if row is None:
        raise NotFound(f"no key named {name!r} (mediasearch keys list shows them)")
    if row.revoked is None:
        row.revoked = utcnow()
    # A revoked key keeps its row (its history); the name becomes free again for a new key.
    row.name = f"{row.name}~revoked-{row.id}"[:128]


def active_keys(session: Session) -> dict[str, ApiKey]:
    """Every key that is not revoked, by hash (what a gateway caches)."""
    return {k.key_hash: k for k in list_keys(session, include_revoked=False)}


def record_use(session: Session, last_used: Mapping[str, datetime]) -> None:
    """Set ``last_used`` of the keys with these hashes (one statement per key, in one transaction)."""
    with translated("recording API key use"):
        for key_hash, when in last_used.items():
            session.execute(update(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash).values(last_used=when))


def _key(row: ApiKeyRow) -> ApiKey:
    name = row.name.split("~revoked-", 1)[0]
    return ApiKey(
        name,
        row.key_hash,
        row.prefix,
        tuple(row.scopes),
        row.rate_rps,
        row.burst,
        row.created,
        row.last_used,
        row.revoked,
    )
