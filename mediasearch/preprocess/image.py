"""Image preprocessing: bytes -> RGB -> shortest-side bicubic resize -> centre crop -> uint8 HWC.

The vision graph takes ``uint8 [batch, size, size, 3]`` (already resized and cropped) and folds the
cast and the mean/std normalisation into the graph: a quarter of the bytes of float32 NCHW on the
wire to Triton, and one less place where normalisation could be done differently.
:func:`normalize` is the same arithmetic in numpy, for parity tests and reference code.

The resize and crop follow CLIP's reference processor (transformers' ``CLIPImageProcessor``):
the short side goes to ``resize`` pixels with PIL's bicubic filter, the long side to
``int(resize * long / short)``, then a centre crop with the top-left offset ``(dim - crop) // 2``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from mediasearch.errors import ImageError
from mediasearch.settings import Settings


@dataclass(frozen=True)
class ImageSpec:
    """How the model expects its images (read from the model manifest)."""

    resize: int  # the short side after resizing
    crop: int  # square centre crop; the vision input is crop x crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def decode_image(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Decode encoded image bytes into an upright RGB image.

    EXIF orientation is applied; grayscale, CMYK, palette and alpha images become RGB (transparency is
    composited onto white, as CLIP's reference processor does). Refuses, with :class:`ImageError`:
    empty or oversized input, non-images, truncated or corrupt files, and decompression bombs
    (more than ``max_pixels`` pixels, checked from the header before any pixel is decoded).
    Unset limits are the settings' defaults (``MEDIASEARCH_MAX_IMAGE_BYTES``, ``..._PIXELS``).
    """
    defaults = Settings.defaults()
    max_bytes = defaults.max_image_bytes if max_bytes is None else max_bytes
    max_pixels = defaults.max_image_pixels if max_pixels is None else max_pixels
    if not data:
        raise ImageError("empty image: 0 bytes")
    if len(data) > max_bytes:
        raise ImageError(f"image too large: {len(data)} bytes (limit {max_bytes})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image has {width}x{height} = {width * height} pixels (limit {max_pixels}); "
                    "refused as a possible decompression bomb"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError("not an image, or an image format Pillow cannot read") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a possible decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated and corrupt data as OSError ("image file is truncated", ...).
        raise ImageError(f"corrupt or truncated image: {exc}") from exc
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping everything above 255 to white.
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) or 1.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), mode="L")
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        # Transparent pixels carry arbitrary colour; show them on white, as the reference does.
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, resize: int, crop: int) -> NDArray[np.uint8]:
    """Shortest side to ``resize`` (bicubic), centre crop ``crop`` x ``crop``; uint8 HWC RGB."""
    if img.mode != "RGB":
        img = _to_rgb(img)
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    if new_h < crop or new_w < crop:  # only when crop > resize: pad with zeros like the reference
        padded = np.zeros((max(new_h, crop), max(new_w, crop), 3), dtype=np.uint8)
        top, left = (padded.shape[0] - new_h) // 2, (padded.shape[1] - new_w) // 2
        padded[top : top + new_h, left : left + new_w] = arr
        arr, new_h, new_w = padded, padded.shape[0], padded.shape[1]
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    return np.ascontiguousarray(arr[top : top + crop, left : left + crop])


def prepare_image(
    data: bytes, spec: ImageSpec, *, max_bytes: int | None = None, max_pixels: int | None = None
) -> NDArray[np.uint8]:
    """Encoded bytes -> the vision tower's uint8 HWC input (decode, orient, RGB, resize, crop)."""
    image = decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    return resize_center_crop(image, spec.resize, spec.crop)


def normalize(pixels: NDArray[np.uint8], mean: Sequence[float], std: Sequence[float]) -> NDArray[np.float32]:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]``: ``(x / 255 - mean) / std``.

    The same arithmetic as the vision graph's first nodes; used as the reference in tests.
    """
    x = pixels.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))
