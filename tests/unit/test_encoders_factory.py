"""The one factory: settings choose the encoder; nothing else in the code does."""

from __future__ import annotations

from pathlib import Path

import pytest

from mediasearch.encoders import LocalEncoder, TritonEncoder, create_encoder
from mediasearch.errors import ConfigError, NotFound
from mediasearch.settings import load_settings


def test_factory_builds_the_local_encoder_by_default(tiny_repository: Path) -> None:
    encoder = create_encoder(load_settings(model_repository=tiny_repository, encoder_max_batch=4))
    assert isinstance(encoder, LocalEncoder)
    assert encoder.batching.max_batch == 4
    assert encoder.model_version == encoder.manifest.version


def test_factory_builds_the_triton_encoder_when_settings_say_triton(tiny_repository: Path) -> None:
    settings = load_settings(
        model_repository=tiny_repository,
        encoder="triton",
        triton_grpc_url="10.0.0.7:8001",
        triton_text_bucket=16,
    )
    encoder = create_encoder(settings)
    assert isinstance(encoder, TritonEncoder)
    assert encoder.url == "10.0.0.7:8001" and encoder.options.text_bucket == 16


def test_factory_reads_the_encoder_choice_from_the_environment(
    tiny_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIASEARCH_ENCODER", "triton")
    assert isinstance(create_encoder(load_settings(model_repository=tiny_repository)), TritonEncoder)
    monkeypatch.setenv("MEDIASEARCH_ENCODER", "onnx")
    with pytest.raises(ConfigError, match="MEDIASEARCH_ENCODER"):
        load_settings()


def test_factory_raises_not_found_suggesting_export_when_the_manifest_is_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="mediasearch export"):
        create_encoder(load_settings(model_repository=tmp_path))
