"""Preprocessing, implemented once: export, gateway and indexer all import these functions.

- :mod:`mediasearch.preprocess.text`: tokenisation from the manifest's ``tokenizer.json``.
- :mod:`mediasearch.preprocess.image`: decode (Pillow), bounded before any pixel is allocated,
  EXIF orientation, RGB, shortest-side bicubic resize, centre crop; normalisation (folded into the
  vision graph, kept here as the reference).
"""

from mediasearch.preprocess.image import (
    DecodeLimits,
    ImageSpec,
    decode_image,
    max_decode_bytes,
    normalize,
    prepare_image,
    prepare_image_with_size,
    resize_center_crop,
)
from mediasearch.preprocess.text import TextTokenizer

__all__ = [
    "DecodeLimits",
    "ImageSpec",
    "TextTokenizer",
    "decode_image",
    "max_decode_bytes",
    "normalize",
    "prepare_image",
    "prepare_image_with_size",
    "resize_center_crop",
]
