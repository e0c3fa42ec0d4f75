"""Hypothesis strategies for every request message of ``proto/mediasearch/v1/search.proto``, and
for raw bytes, as calls a generic client sends (:mod:`mediasearch.dev.fuzz_gateway` sends them).

Values reach past what a caller should send: texts over the length limit, top_k outside 1..max,
min_score inf and nan, filter timestamps outside years 1-9999 and nanos outside 0..1e9, image
bytes that are mutated seeds or noise, ids anywhere in int64, and page tokens that are nonsense
or forged with the known key (:data:`~mediasearch.dev.fuzz_targets.SECRET`) for the very request
they come with, sane or carrying anything the format can.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st

from mediasearch._proto.mediasearch.v1 import search_pb2
from mediasearch.dev.fuzz_targets import SECRET
from mediasearch.dev.layout import ROOT
from mediasearch.errors import InvalidInput
from mediasearch.gateway.filters import Filters, filters_from_proto
from mediasearch.gateway.paging import PageToken, encode_token, fingerprint
from mediasearch.vector_index.shard import DEFAULT_K

REQUESTS: dict[str, Any] = {
    "SearchText": search_pb2.SearchTextRequest,
    "SearchImage": search_pb2.SearchImageRequest,
    "GetImage": search_pb2.GetImageRequest,
    "Stats": search_pb2.StatsRequest,
}
WORDS = ("red", "blue", "green", "circle", "square", "triangle", "star", "local", "scene", "")


class Served(Protocol):
    """What the strategies need to know of the gateway they fuzz."""

    model_version: str
    dim: int  # the width of its vectors
    image_ids: list[int]  # ids it has indexed


@dataclass(frozen=True)
class Call:
    method: str
    payload: bytes
    what: str  # for reports: the request in text form, or "N raw bytes"


def message_call(method: str, request: Any) -> Call:
    return Call(method, request.SerializeToString(), f"{type(request).__name__}({str(request)[:300]!r})")


def request_fingerprint(
    query: tuple[str, object], top_k: int, filters: Any = None, min_score: float = 0.0
) -> bytes:
    """The fingerprint the gateway pins a request's pages to (see query_path.SearchEngine._search)."""
    try:
        parsed = filters_from_proto(filters) if filters is not None else Filters()
    except InvalidInput:
        parsed = Filters()  # refused before any token is read
    return fingerprint(query, top_k or DEFAULT_K, parsed, round(min_score, 6))


def _timestamps() -> st.SearchStrategy[Timestamp]:
    return st.builds(
        Timestamp,
        seconds=st.one_of(st.integers(-62135596800, 253402300799), st.integers(-(2**63), 2**63 - 1)),
        nanos=st.one_of(st.just(0), st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1)),
    )


@st.composite
def filters(draw: st.DrawFn) -> Any:
    words = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), max_size=4)
    kinds = st.lists(st.sampled_from(["image/jpeg", "image/png", ""]) | st.text(max_size=12), max_size=3)
    message = search_pb2.Filters(
        tags_any=draw(words),
        tags_all=draw(words),
        content_types=draw(kinds),
        bucket=draw(st.sampled_from(["", "local", "photos"]) | st.text(max_size=12)),
        key_prefix=draw(st.sampled_from(["", "scene-", "x/"]) | st.text(max_size=12)),
    )
    for name in ("created_after", "created_before"):
        if draw(st.booleans()):
            getattr(message, name).CopyFrom(draw(_timestamps()))
    return message


@st.composite
def page_token(draw: st.DrawFn, gateway: Served, query: tuple[str, object], request: Any) -> str:
    """No token, nonsense, or a token forged for this very request (signed with the known key):
    ``sane`` ones look like the gateway's own (they reach the paged search), ``odd`` ones carry
    anything the format can (other widths, inf and nan, huge cursors, another request's
    fingerprint, another model, a flipped byte)."""
    kind = draw(st.sampled_from(["none", "none", "text", "bytes", "sane", "sane", "odd", "odd"]))
    if kind == "none":
        return ""
    if kind == "text":
        return draw(st.text(max_size=64))
    if kind == "bytes":
        return base64.urlsafe_b64encode(draw(st.binary(max_size=400))).decode().rstrip("=")
    sane = kind == "sane"
    filters_ = request.filters if request.HasField("filters") else None
    fp = request_fingerprint(query, request.top_k, filters_, request.min_score)
    odd = st.integers(0, 3).map(bool) if not sane else st.just(True)  # mostly the right field
    width = gateway.dim if draw(odd) else draw(st.sampled_from([0, 1, gateway.dim + 1, 2 * gateway.dim]))
    if sane or draw(st.booleans()):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        vector = rng.standard_normal(width).astype(np.float32)
        vector /= max(float(np.linalg.norm(vector)), 1e-6)
    else:
        vector = np.asarray(draw(st.lists(st.floats(width=32), min_size=width, max_size=width)), np.float32)
    token = PageToken(
        fp if draw(odd) else draw(st.binary(min_size=8, max_size=8)),
        gateway.model_version if draw(odd) else draw(st.text(max_size=8)),
        draw(st.floats(1e9, 3e9) if sane else st.floats()),
        draw(st.floats(-1, 1, width=32) if sane else st.floats(width=32)),
        draw(st.sampled_from(gateway.image_ids) if sane else st.integers(-(2**63), 2**63 - 1)),
        draw(st.integers(0, 50) if sane else st.integers(0, 2**32 - 1)),
        vector,
    )
    text = encode_token(token, SECRET)
    if not sane and not draw(odd):  # a body that decodes to nonsense: flip a byte, re-sign
        raw = bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))[:-16])
        if raw:
            raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        mac = hmac.new(SECRET.encode(), bytes(raw), hashlib.sha256).digest()[:16]
        text = base64.urlsafe_b64encode(bytes(raw) + mac).decode().rstrip("=")
    return text


def _paging(draw: st.DrawFn, request: Any) -> None:
    request.top_k = draw(st.sampled_from([0, 3, 10, 100, 101, -1]) | st.integers(-(2**31), 2**31 - 1))
    request.min_score = draw(st.one_of(st.just(0.0), st.floats(-1, 1, width=32), st.floats(width=32)))
    if draw(st.booleans()):
        request.filters.CopyFrom(draw(filters()))


@st.composite
def search_text(draw: st.DrawFn, gateway: Served) -> Call:
    text = draw(
        st.one_of(
            st.sampled_from(["two red circles", "a blue star", "scene", " ", ""]),
            st.text(max_size=80),
            st.text(min_size=995, max_size=1002),
        )
    )
    request = search_pb2.SearchTextRequest(text=text)
    _paging(draw, request)
    request.page_token = draw(page_token(gateway, ("text", text.strip()), request))
    return message_call("SearchText", request)


def image_bytes(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            op = draw(st.sampled_from(["set", "cut", "insert"]))
            if op == "set":
                data[at] = draw(st.integers(0, 255))
            elif op == "cut":
                del data[at : at + draw(st.integers(1, 64))]
            else:
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            if not data:
                break
        return bytes(data)

    return st.one_of(st.sampled_from(seeds), st.binary(max_size=512), mutated())


@st.composite
def search_image(draw: st.DrawFn, gateway: Served, seeds: list[bytes]) -> Call:
    request = search_pb2.SearchImageRequest()
    if draw(st.booleans()):
        request.image = draw(image_bytes(seeds))
        query: tuple[str, object] = ("image", hashlib.sha256(request.image).digest())
    else:
        request.image_id = draw(_ids(gateway))
        query = ("like", request.image_id)
    _paging(draw, request)
    request.page_token = draw(page_token(gateway, query, request))
    return message_call("SearchImage", request)


def _ids(gateway: Served) -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from(gateway.image_ids), st.integers(-3, 100), st.integers(-(2**63), 2**63 - 1)
    )


@st.composite
def get_image(draw: st.DrawFn, gateway: Served) -> Call:
    return message_call("GetImage", search_pb2.GetImageRequest(id=draw(_ids(gateway))))


def stats() -> st.SearchStrategy[Call]:
    return st.just(message_call("Stats", search_pb2.StatsRequest()))


def _wire(fields: list[tuple[int, int, bytes]]) -> bytes:
    """Protobuf-shaped bytes: each field a key, then a varint, a length-delimited or a fixed value."""
    out = bytearray()
    for number, wire, value in fields:
        out += _varint(number << 3 | wire)
        if wire == 0:
            out += _varint(int.from_bytes(value[:9] or b"\0", "little"))
        elif wire == 2:
            out += _varint(len(value)) + value
        else:
            out += value[: {1: 8, 5: 4}.get(wire, len(value))]
    return bytes(out)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@st.composite
def garbage(draw: st.DrawFn) -> Call:
    """Bytes sent as is: random, protobuf-shaped (wrong types, bad UTF-8, lengths past the end),
    or another method's request."""
    method = draw(st.sampled_from(sorted(REQUESTS)))
    kind = draw(st.sampled_from(["random", "wire", "wire", "truncated"]))
    if kind == "random":
        payload = draw(st.binary(max_size=256))
    else:
        fields = st.tuples(
            st.integers(1, 9), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]), st.binary(max_size=24)
        )
        payload = _wire(draw(st.lists(fields, min_size=1, max_size=6)))
        if kind == "truncated":
            payload = payload[: draw(st.integers(0, max(0, len(payload) - 1)))]
    return Call(method, payload, f"{len(payload)} raw bytes {payload[:64]!r}")


def strategies(gateway: Served, seeds: list[bytes]) -> dict[str, st.SearchStrategy[Call]]:
    """One strategy per request kind, over this gateway's model, vectors and images."""
    return {
        "SearchText": search_text(gateway),
        "SearchImage": search_image(gateway, seeds),
        "GetImage": get_image(gateway),
        "Stats": stats(),
        "garbage": garbage(),
    }


def seed_images() -> list[bytes]:
    """The image seeds of the decoder's fuzz corpus (small PNG, JPEG, WebP, GIF, BMP)."""
    return [p.read_bytes() for p in sorted((ROOT / "tests" / "fuzz_corpus" / "image").iterdir())]
