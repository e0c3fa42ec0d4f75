"""Fuzz targets: the parsers that take bytes from outside, each called with one input.

A target returns when the input got a defined outcome (a value that is safe to use, or the
project's refusal, :class:`~mediasearch.errors.InvalidInput` and its subclass ``ImageError``) and
raises anything else: a crash. ``python -m mediasearch.dev.fuzz`` runs them under atheris
(libFuzzer), the tests run them for a few seconds and replay ``tests/fuzz_corpus/regressions/``.

- ``image``: :func:`mediasearch.preprocess.image.prepare_image` with a CLIP-sized spec and the
  default limits; a result must be ``uint8 [224, 224, 3]``.
- ``token``: :func:`mediasearch.gateway.paging.decode_token`. The first byte picks the mode:
  even, the rest is the token's text; odd, the rest is a token *body* signed with :data:`SECRET`
  (a forged token from someone who knows the key: the seeds are valid bodies, so mutations keep
  most of the structure). An accepted token must be safe to search with: the expected width,
  finite numbers, this request's fingerprint and model.
- ``events``: :func:`mediasearch.indexer.events.parse_message` on the bytes as UTF-8 (invalid
  sequences kept as lone surrogates); every event must fit the images table.
- ``filters``: a ``mediasearch.v1.Filters`` message parsed from the bytes (bytes that are no such
  message are the gRPC layer's concern: skipped), :func:`~mediasearch.gateway.filters.filters_from_proto`,
  then :meth:`Filters.matches` on sample records must answer a bool.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
from google.protobuf.message import DecodeError

from mediasearch._proto.mediasearch.v1 import search_pb2
from mediasearch.errors import InvalidInput
from mediasearch.gateway.filters import Filters, filters_from_proto
from mediasearch.gateway.paging import PageToken, decode_token, encode_token, fingerprint
from mediasearch.indexer.events import parse_message
from mediasearch.metadata.images_repo import ImageRecord
from mediasearch.preprocess.image import ImageSpec, prepare_image

Target = Callable[[bytes], None]

SPEC = ImageSpec(224, 224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
SECRET = "fuzz-secret"  # the test key forged tokens are signed with
MODEL = "fuzz-model@1"
DIM = 16
FINGERPRINT = fingerprint(("text", "two red circles"), 10, Filters(), 0.0)
_MAC_BYTES = 16


class UnsafeOutput(AssertionError):
    """A parser accepted an input and returned something its callers cannot safely use."""


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise UnsafeOutput(what)


# -- image -------------------------------------------------------------------------------------
def image(data: bytes) -> None:
    try:
        pixels = prepare_image(data, SPEC)
    except InvalidInput:
        return
    _check(pixels.shape == (SPEC.crop, SPEC.crop, 3) and pixels.dtype == np.uint8, f"pixels {pixels.shape}")


# -- token -------------------------------------------------------------------------------------
def sign(body: bytes, secret: str = SECRET) -> str:
    """A token with this body, signed the way :func:`encode_token` signs (for forged tokens)."""
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")


def sample_token(seed: int = 0) -> PageToken:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return PageToken(FINGERPRINT, MODEL, 1.79e9, 0.25, 42, 10, vector / np.linalg.norm(vector))


def token(data: bytes) -> None:
    if not data:
        return
    text = sign(data[1:]) if data[0] % 2 else data[1:].decode("utf-8", "surrogateescape")
    try:
        got = decode_token(text, SECRET, fingerprint=FINGERPRINT, model_version=MODEL, dim=DIM)
    except InvalidInput:
        return
    _check(got.fingerprint == FINGERPRINT and got.model_version == MODEL, "another request's token")
    _check(got.vector.shape == (DIM,) and got.vector.dtype == np.float32, f"vector {got.vector.shape}")
    _check(bool(np.isfinite(got.vector).all()), "a vector with inf or nan")
    _check(math.isfinite(got.as_of) and math.isfinite(got.after_score), "an inf or nan cursor")
    _check(got.served >= 0, "served < 0")
    # what the query path does with it next: a cursor comparison and the next token
    _check(np.isfinite(np.float32(got.after_score)), "a cursor float32 cannot hold")
    encode_token(got, SECRET)


# -- events ------------------------------------------------------------------------------------
_BUCKET_CHARS, _KEY_CHARS, _ETAG_CHARS = 255, 1024, 128  # the images table's columns


def _storable(text: object, limit: int) -> bool:
    if not isinstance(text, str) or not text or len(text) > limit or "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: neither PostgreSQL nor S3 takes them
        return False
    return True


def events(data: bytes) -> None:
    try:
        parsed = parse_message(data.decode("utf-8", "surrogateescape"))
    except InvalidInput:
        return
    _check(isinstance(parsed, list), "not a list")
    for event in parsed:
        _check(event.kind in ("created", "removed"), f"kind {event.kind!r}")
        _check(_storable(event.bucket, _BUCKET_CHARS), f"bucket {event.bucket!r:.80}")
        _check(_storable(event.key, _KEY_CHARS), f"key {event.key!r:.80}")
        _check(event.etag is None or _storable(event.etag, _ETAG_CHARS), f"etag {event.etag!r:.80}")
        _check(event.size is None or (type(event.size) is int and 0 <= event.size < 2**63), "size")
        _check(event.sequencer is None or isinstance(event.sequencer, str), "sequencer")
        if event.time is not None:
            _check(event.time.utcoffset() is not None, "a naive event time")
            event.time.astimezone(UTC)  # what storing it does


# -- filters -----------------------------------------------------------------------------------
def _record(image_id: int, **changes: object) -> ImageRecord:
    fields: dict[str, object] = dict(
        image_id=image_id, bucket="photos", key="cats/tom.jpg", etag="e", size=10,
        content_type="image/jpeg", width=4, height=3, created=datetime(2026, 1, 1, tzinfo=UTC),
        indexed=datetime(2026, 1, 2, tzinfo=UTC), tags=("red", "circle"), model_version=MODEL,
        shard=0, status="indexed", error=None,
    )  # fmt: skip
    fields.update(changes)
    return ImageRecord(**fields)  # type: ignore[arg-type]


RECORDS = (
    _record(1),
    _record(2, content_type=None, tags=(), key="", created=datetime(1, 1, 1, tzinfo=UTC)),
    _record(3, created=datetime(9999, 12, 31, 23, 59, tzinfo=UTC), bucket="", tags=("",)),
)


def filters(data: bytes) -> None:
    try:
        message = search_pb2.Filters.FromString(data)
    except DecodeError:
        return  # not a Filters message: the gRPC layer answers INVALID_ARGUMENT before any handler
    try:
        parsed = filters_from_proto(message)
    except InvalidInput:
        return
    for stamp in (parsed.created_after, parsed.created_before):
        _check(stamp is None or stamp.utcoffset() is not None, "a naive filter time")
    for record in RECORDS:
        _check(isinstance(parsed.matches(record), bool), "matches() is not a bool")
    fingerprint(("text", "x"), 10, parsed, 0.0)  # the page token's fingerprint repr()s the filters


TARGETS: dict[str, Target] = {"image": image, "token": token, "events": events, "filters": filters}


def token_body(token: PageToken) -> bytes:
    """The signed part of an encoded token (a seed for the forged-token mode)."""
    text = encode_token(token, SECRET)
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return raw[:-_MAC_BYTES]
