"""Encoded images sent as they are, for Triton to decode on the GPU (``<name>_vision_bytes``).

When the model was exported with ``--dali`` and ``MEDIASEARCH_TRITON_IMAGE_BYTES`` is set, the Triton
encoder sends an image's file rather than its pixels: one request per image, uint8 ``[1, bytes]``;
Triton's ragged batching merges requests of different lengths into one DALI batch, so nothing is
padded. Before that, :func:`probe_image` reads the header only (no pixel is decoded) and applies the
same refusals as the CPU path before it decodes (size, format, pixel count, aspect ratio, header
floods), and decides which images the GPU path may take: those it decodes as the CPU path does up to
resampling. Others are decoded here (:mod:`mediasearch.preprocess`), as without the ensemble:

- formats: JPEG and PNG only. DALI reads no GIF, only simple WebP, and BMP/TIFF/PPM are rare enough
  that one decoder for the common case is the safer bet;
- colour: RGB or grayscale without transparency. The CPU path composites transparency onto white and
  converts CMYK, palette and 16-bit images its own way; DALI does not do the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import InferInput

from mediasearch.errors import ImageError
from mediasearch.model_manifest import ServingSpec

# The header checks of mediasearch.preprocess, before any pixel is decoded.
from mediasearch.preprocess._image_guards import open_image
from mediasearch.preprocess.image import DecodeLimits

GPU_FORMATS = frozenset({"JPEG", "MPO", "PNG"})  # MPO: a JPEG with more pictures; both decode the first
GPU_MODES = frozenset({"RGB", "L"})
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the image a quarter


@dataclass(frozen=True)
class ImageProbe:
    """What an encoded image's header says."""

    width: int  # upright: EXIF orientation applied, as the decoders apply it
    height: int
    format: str
    mode: str
    gpu: bool  # the bytes path may decode it (module doc); False: decode it here

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def probe_image(data: bytes, limits: DecodeLimits) -> ImageProbe:
    """Read ``data``'s header; :class:`ImageError` for what the CPU path refuses before decoding.

    Cheap (no pixel decoded: under 30 ms and 1 MB for the most hostile header) and safe on untrusted
    bytes. A file that passes may still be corrupt past its header; the decoder says so.
    """
    try:
        img = open_image(data, limits)
        width, height = img.size
        fmt, mode = str(img.format), img.mode
        if img.getexif().get(0x0112, 1) in _SWAPS_AXES:
            width, height = height, width
        transparent = "transparency" in img.info
    except ImageError:
        raise
    except Exception as exc:  # untrusted bytes: whatever the header parser throws is about this image
        raise ImageError(f"cannot decode image: {exc!r}") from exc
    gpu = fmt in GPU_FORMATS and mode in GPU_MODES and not transparent
    return ImageProbe(width, height, fmt, mode, gpu)


def bytes_request(spec: ServingSpec, data: bytes) -> InferInput:
    """The input of one request to the bytes ensemble ``spec``: the file as uint8 ``[1, len(data)]``."""
    tensor = InferInput(spec.input.name, [1, len(data)], spec.input.dtype)
    tensor.set_data_from_numpy(np.frombuffer(data, dtype=np.uint8).reshape(1, -1))
    return tensor
