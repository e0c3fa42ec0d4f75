"""The one place that turns settings into an encoder (embedded vs cluster is configuration)."""

from __future__ import annotations

from mediasearch.encoders.base import Encoder, ImageLimits
from mediasearch.encoders.local import BatchingOptions, LocalEncoder
from mediasearch.encoders.triton import TritonClientOptions, TritonEncoder
from mediasearch.settings import Settings


def create_encoder(settings: Settings) -> Encoder:
    """``MEDIASEARCH_ENCODER=local`` (default) or ``triton``; both read the manifest in the repository.

    The encoder is not started: ``async with create_encoder(settings) as encoder: ...``.
    """
    limits = ImageLimits.from_settings(settings)
    if settings.encoder == "triton":
        options = TritonClientOptions.from_settings(settings)
        return TritonEncoder(settings.model_repository, settings.model_name, options=options, limits=limits)
    batching = BatchingOptions.from_settings(settings)
    return LocalEncoder(settings.model_repository, settings.model_name, batching=batching, limits=limits)
