"""Preprocessing, implemented once: export, gateway and indexer all import these functions.

- :mod:`mediasearch.preprocess.text`: tokenisation from the manifest's ``tokenizer.json``.
- :mod:`mediasearch.preprocess.image`: decode (Pillow), EXIF orientation, RGB, shortest-side bicubic
  resize, centre crop; normalisation (folded into the vision graph, kept here as the reference).
"""

from mediasearch.preprocess.image import (
    ImageSpec,
    decode_image,
    normalize,
    prepare_image,
    resize_center_crop,
)
from mediasearch.preprocess.text import TextTokenizer

__all__ = [
    "ImageSpec",
    "TextTokenizer",
    "decode_image",
    "normalize",
    "prepare_image",
    "resize_center_crop",
]
