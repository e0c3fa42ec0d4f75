"""Page tokens: opaque, signed, and pinned to one result set.

A token carries everything the next page needs, so any gateway replica can serve it and pages
never repeat or skip:

- the query **vector** of the first page (the next page neither re-encodes nor risks a slightly
  different vector from a differently padded batch: the scores are the same numbers again);
- a **cursor**: the (score, id) of the last result served; the next page starts strictly after it
  in the one ranking order (score descending, id ascending). A cursor, not an offset, so an image
  deleted meanwhile does not shift later results onto the served side (a skip);
- an **as-of** time: images indexed after the first page are left out of later pages (so a new
  image can neither appear above the cursor unseen nor push a result onto the next page twice);
- the **model version** and a **fingerprint** of the rest of the request (text or image, filters,
  top_k, min_score): a token is refused (INVALID_ARGUMENT) with another request or after a model
  change, rather than silently answering a different question.

The body is packed binary, signed with HMAC-SHA256 (``gateway_token_secret``) and base64url-encoded;
a 512-dim vector makes a ~2.8 kB token. Keys rotate: tokens are signed with the first secret and
accepted under any of those given (the current one, then ``gateway_token_secret_previous`` for as
long as pages issued under it may still be followed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mediasearch.errors import InvalidInput

_VERSION = 2  # 2: the fingerprint is two halves, the query's and the rest's
_HEADER = struct.Struct("<B8s8sdfqIH")  # version, fingerprint, model hash, as_of, score, id, served, dim
_MAC_BYTES = 16


@dataclass(frozen=True)
class PageToken:
    fingerprint: bytes  # 8 bytes: 4 of the query's hash, 4 of the rest of the request's
    model_version: str
    as_of: float  # unix seconds
    after_score: float
    after_id: int
    served: int  # results served by earlier pages (sizes the next candidate draw)
    vector: np.ndarray  # float32 (dim,)


def _hash4(parts: tuple[object, ...]) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else repr(part).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()[:4]


def fingerprint(query: object, *rest: object) -> bytes:
    """8 bytes: 4 that change with the query (the text, the image's digest, the image id), 4 with
    any other part (top_k, filters, min_score; parts are repr'd, bytes hashed as is). A later page
    may leave the query out (the token carries its vector): then only the rest is compared."""
    return _hash4((query,)) + _hash4(rest)


def _model_hash(version: str) -> bytes:
    return hashlib.sha256(version.encode()).digest()[:8]


def encode_token(token: PageToken, secret: str) -> str:
    vector = np.ascontiguousarray(token.vector, dtype="<f4")
    body = (
        _HEADER.pack(
            _VERSION,
            token.fingerprint,
            _model_hash(token.model_version),
            token.as_of,
            token.after_score,
            token.after_id,
            token.served,
            len(vector),
        )
        + vector.tobytes()
    )
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")


MAX_TOKEN_CHARS = 16_384  # a 4,096-dim vector's token is ~22 kB of base64: none of ours comes near


def decode_token(
    text: str,
    secrets: str | Sequence[str],
    *,
    fingerprint: bytes,
    model_version: str,
    dim: int | None = None,
    any_query: bool = False,
) -> PageToken:
    """The token's contents, or InvalidInput saying why it cannot be used with this request.

    ``secrets``: the keys a token may be signed with (current first); ``dim``: the query vector's
    width the service expects (a token carrying another is refused). ``any_query``: the request left
    its query out (a later page of an image search need not send the image again)
    """
    if len(text) > 4 * MAX_TOKEN_CHARS:
        raise InvalidInput("page_token is not a token this service issued")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        raise InvalidInput("page_token is not a token this service issued") from exc
    body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    signed = any(
        hmac.compare_digest(mac, hmac.new(key.encode(), body, hashlib.sha256).digest()[:_MAC_BYTES])
        for key in keys
        if key
    )
    if len(raw) < _HEADER.size + _MAC_BYTES or not signed:
        raise InvalidInput("page_token is not a token this service issued")
    version, fp, model, as_of, score, after_id, served, width = _HEADER.unpack_from(body)
    if version != _VERSION or len(body) != _HEADER.size + 4 * width:
        raise InvalidInput("page_token has an unknown format")
    if (dim is not None and width != dim) or not all(map(np.isfinite, (as_of, score))):
        raise InvalidInput("page_token has an unknown format")
    if (fp[4:] if any_query else fp) != (fingerprint[4:] if any_query else fingerprint):
        raise InvalidInput("page_token belongs to a different request (same text, filters and top_k needed)")
    if model != _model_hash(model_version):
        raise InvalidInput("page_token has expired: the model changed since the first page")
    vector = np.frombuffer(body, dtype="<f4", offset=_HEADER.size, count=width).astype(np.float32)
    if not np.isfinite(vector).all() or abs(float(np.dot(vector, vector)) - 1.0) > 1e-3:
        raise InvalidInput("page_token has an unknown format")  # query vectors are unit length
    return PageToken(fp, model_version, as_of, score, after_id, served, vector)
