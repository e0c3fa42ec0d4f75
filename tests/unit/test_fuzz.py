"""The fuzz targets: their seeds are valid inputs, their checks catch unsafe outputs, and each
survives a short atheris run from its seeds (``make fuzz`` runs them for a minute each)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from mediasearch.dev import fuzz_targets
from mediasearch.dev.fuzz import CORPUS, RSS_LIMIT_MB, TARGET_NAMES, exception_signature, run_target
from mediasearch.gateway.paging import PageToken, decode_token
from mediasearch.indexer.events import ObjectEvent, parse_message
from mediasearch.preprocess.image import prepare_image

SECONDS = {"image": 3, "token": 2, "events": 2, "filters": 2}  # about 16 s with the children's starts


def seeds(target: str) -> list[Path]:
    return sorted((CORPUS / target).iterdir())


def test_every_target_is_run_by_make_fuzz_and_has_seeds() -> None:
    assert set(TARGET_NAMES) == set(fuzz_targets.TARGETS) == set(SECONDS)
    for target in TARGET_NAMES:
        assert seeds(target), f"no seeds in {CORPUS / target}"


def test_the_image_seeds_are_images_the_decoder_accepts() -> None:
    formats = {p.suffix for p in seeds("image")}
    assert {".png", ".jpg", ".webp", ".gif"} <= formats
    for path in seeds("image"):
        assert prepare_image(path.read_bytes(), fuzz_targets.SPEC).shape == (224, 224, 3), path.name


def test_the_token_seeds_decode_so_mutations_start_from_an_accepted_token() -> None:
    for path in seeds("token"):
        data = path.read_bytes()
        text = fuzz_targets.sign(data[1:]) if data[0] % 2 else data[1:].decode()
        token = decode_token(
            text, fuzz_targets.SECRET, fingerprint=fuzz_targets.FINGERPRINT,
            model_version=fuzz_targets.MODEL, dim=fuzz_targets.DIM,
        )  # fmt: skip
        assert token.vector.shape == (fuzz_targets.DIM,), path.name


def test_the_event_seeds_are_the_shapes_s3_sends() -> None:
    parsed = {p.name: parse_message(p.read_text()) for p in seeds("events")}
    assert parsed["test-event.json"] == []
    assert parsed["sns-wrapped.json"] == parsed["s3-put.json"]
    assert [e.kind for e in parsed["s3-put.json"] + parsed["s3-delete.json"]] == ["created", "removed"]


def test_the_token_target_calls_a_nan_vector_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    nan = PageToken(fuzz_targets.FINGERPRINT, fuzz_targets.MODEL, 1.0, 0.5, 1, 0, np.full(16, np.nan, "f4"))
    monkeypatch.setattr(fuzz_targets, "decode_token", lambda *a, **k: nan)
    with pytest.raises(fuzz_targets.UnsafeOutput, match="inf or nan"):
        fuzz_targets.token(b"\x00" + base64.b64encode(b"anything"))


def test_the_events_target_calls_a_key_the_database_cannot_store_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fuzz_targets, "parse_message", lambda body: [ObjectEvent("created", "b", "k\udcff")])
    with pytest.raises(fuzz_targets.UnsafeOutput, match="key"):
        fuzz_targets.events(b"{}")


def test_crash_signatures_tell_crashes_apart_by_type_field_and_place() -> None:
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "/r/mediasearch/dev/fuzz_targets.py", line 80, in events\n'
        '  File "/r/mediasearch/dev/fuzz_targets.py", line 58, in _check\n'
        "mediasearch.dev.fuzz_targets.UnsafeOutput: key 'a\\x00'\n"
    )
    assert (
        exception_signature(traceback)
        == "mediasearch.dev.fuzz_targets.UnsafeOutput(key) at fuzz_targets.py:80 in events"
    )


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_fuzz_target_survives_a_short_atheris_run_from_its_seeds(target: str, tmp_path: Path) -> None:
    result = run_target(target, SECONDS[target], work=tmp_path, seed=1)
    assert result.execs > 0
    assert not result.crashes, "\n\n".join(f"{c.signature} ({c.artifact})\n{c.log}" for c in result.crashes)
    assert 0 < result.max_rss_mb < RSS_LIMIT_MB
