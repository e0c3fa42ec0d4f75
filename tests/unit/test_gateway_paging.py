"""Page tokens: round trip, and every way a token is refused with a readable message."""

from __future__ import annotations

import numpy as np
import pytest

from mediasearch.errors import InvalidInput
from mediasearch.gateway.paging import PageToken, decode_token, encode_token, fingerprint

SECRET = "s3cret"


def _token(**kw: object) -> PageToken:
    base = dict(
        fingerprint=fingerprint(("text", "red"), 10),
        model_version="m1",
        as_of=1234.5,
        after_score=0.25,
        after_id=42,
        served=10,
        vector=np.arange(64, dtype=np.float32) / np.linalg.norm(np.arange(64, dtype=np.float32)),
    )
    base.update(kw)
    return PageToken(**base)  # type: ignore[arg-type]


def test_token_round_trips_cursor_as_of_and_vector() -> None:
    token = _token()
    back = decode_token(
        encode_token(token, SECRET), SECRET, fingerprint=token.fingerprint, model_version="m1"
    )
    assert (back.as_of, back.after_score, back.after_id, back.served) == (1234.5, 0.25, 42, 10)
    np.testing.assert_array_equal(back.vector, token.vector)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t[:-3] + ("AAA" if t[-3:] != "AAA" else "BBB"), "not a token this service issued"),
        (lambda t: "!!!" + t, "not a token this service issued"),
        (lambda t: "", "not a token this service issued"),
    ],
)
def test_tampered_or_garbage_tokens_are_invalid_input(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    token = _token()
    with pytest.raises(InvalidInput, match=message):
        decode_token(
            mutate(encode_token(token, SECRET)), SECRET, fingerprint=token.fingerprint, model_version="m1"
        )


def test_token_of_another_request_secret_or_model_is_refused() -> None:
    token = _token()
    text = encode_token(token, SECRET)
    with pytest.raises(InvalidInput, match="different request"):
        decode_token(text, SECRET, fingerprint=fingerprint(("text", "blue"), 10), model_version="m1")
    with pytest.raises(InvalidInput, match="model changed"):
        decode_token(text, SECRET, fingerprint=token.fingerprint, model_version="m2")
    with pytest.raises(InvalidInput, match="not a token"):
        decode_token(text, "other", fingerprint=token.fingerprint, model_version="m1")


def test_fingerprint_changes_with_every_part() -> None:
    assert fingerprint("a", 1) != fingerprint("a", 2)
    assert fingerprint(b"xy", b"z") != fingerprint(b"x", b"yz")


def test_a_signed_token_whose_vector_is_not_unit_length_is_refused() -> None:
    token = _token(vector=np.full(64, 10.0, dtype=np.float32))  # finite, but no encoder makes it
    with pytest.raises(InvalidInput, match="unknown format"):
        decode_token(encode_token(token, SECRET), SECRET, fingerprint=token.fingerprint, model_version="m1")


def test_a_later_page_may_leave_the_query_out_but_not_change_the_rest() -> None:
    first = fingerprint(("image", b"digest"), 10, "filters", 0.2)
    token = _token(fingerprint=first)
    text = encode_token(token, SECRET)
    without = fingerprint(None, 10, "filters", 0.2)  # no image sent with the token
    assert (
        decode_token(text, SECRET, fingerprint=without, model_version="m1", any_query=True).fingerprint
        == first
    )
    with pytest.raises(InvalidInput, match="different request"):  # a query given must be the same
        decode_token(text, SECRET, fingerprint=without, model_version="m1")
    with pytest.raises(InvalidInput, match="different request"):  # the rest must be the same
        decode_token(text, SECRET, fingerprint=fingerprint(None, 11, "filters", 0.2), model_version="m1",
                     any_query=True)  # fmt: skip
