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
    limits = ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        decode_threads=settings.image_decode_threads,
    )
    max_wait_s = settings.encoder_max_wait_ms / 1000.0
    if settings.encoder == "triton":
        options = TritonClientOptions(
            url=settings.triton_grpc_url,
            timeout_s=settings.triton_timeout_s,
            retries=settings.triton_retries,
            text_bucket=settings.triton_text_bucket,
            pass_cost_tokens=settings.encoder_pass_cost_tokens,
            client_batching=settings.triton_client_batching,
            max_wait_s=max_wait_s,
        )
        return TritonEncoder(settings.model_repository, settings.model_name, options=options, limits=limits)
    batching = BatchingOptions(
        max_batch=settings.encoder_max_batch,
        max_wait_s=max_wait_s,
        pass_cost_tokens=settings.encoder_pass_cost_tokens,
        max_inflight=settings.encoder_max_inflight,
        ort_threads=settings.encoder_ort_threads,
    )
    return LocalEncoder(settings.model_repository, settings.model_name, batching=batching, limits=limits)
