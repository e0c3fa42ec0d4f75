"""Thumbnails: WebP, longest side as asked and never upscaled, aspect kept, upright, flattened on
white; bad input refused like the vision path refuses it; the decode path's thumbnail costs no
second decode and leaves the vision tower's input exactly as it was."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mediasearch.errors import ImageError
from mediasearch.preprocess.image import DecodeLimits, ImageSpec, prepare_image_with_size
from mediasearch.preprocess.thumbnail import THUMBNAIL_CONTENT_TYPE, thumbnail_from_bytes, thumbnail_of

SPEC = ImageSpec(224, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
LIMITS = DecodeLimits(50 << 20, 64_000_000, 500.0)


def _webp(data: bytes) -> Image.Image:
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    img = Image.open(io.BytesIO(data))
    assert img.format == "WEBP" and img.mode == "RGB"
    img.load()
    return img


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _photo(width: int, height: int) -> Image.Image:
    from skimage import data as sk

    return Image.fromarray(sk.astronaut()).resize((width, height), Image.Resampling.BICUBIC)


def _halves(width: int, height: int) -> Image.Image:
    """Red on top, blue below: which way is up shows in the thumbnail."""
    img = Image.new("RGB", (width, height), (220, 30, 30))
    img.paste((30, 30, 220), (0, height // 2, width, height))
    return img


def _diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).mean())


def test_the_content_type_is_webp() -> None:
    assert THUMBNAIL_CONTENT_TYPE == "image/webp"


@pytest.mark.parametrize(
    ("size", "expected"), [((4000, 3000), (256, 192)), ((300, 1200), (64, 256)), ((1000, 1000), (256, 256))]
)
def test_thumbnail_of_makes_a_webp_with_the_longest_side_asked_and_the_aspect_kept(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    thumb = _webp(thumbnail_of(_photo(*size), 256))
    assert thumb.size == expected


def test_a_small_image_is_never_upscaled() -> None:
    small = _photo(120, 80)
    thumb = _webp(thumbnail_of(small, 256))
    assert thumb.size == (120, 80)
    assert _diff(thumb, small) < 6  # only the WebP's loss
    assert _webp(thumbnail_from_bytes(_encode(small, "PNG"), LIMITS, 256)).size == (120, 80)


def test_a_thumbnail_is_small() -> None:
    data = thumbnail_of(_photo(4000, 3000), 256)
    assert 1_000 < len(data) < 40_000


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_an_image_stored_sideways_with_an_exif_orientation_comes_out_upright(
    fmt: str, orientation: int
) -> None:
    upright = _halves(1500, 2000)
    # what a camera stores: pixels turned so that applying the orientation makes them upright
    turned = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    stored = upright.transpose(turned[orientation]) if orientation in turned else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(stored, fmt, exif=exif, quality=95)
    want = _webp(thumbnail_of(upright, 256))

    from_bytes = _webp(thumbnail_from_bytes(data, LIMITS, 256))
    assert from_bytes.size == want.size == (192, 256)
    assert _diff(from_bytes, want) < 4

    _, size, thumb = prepare_image_with_size(data, SPEC, thumbnail=256)
    assert size == (1500, 2000) and thumb is not None
    assert _diff(_webp(thumb), want) < 4


def test_transparency_is_flattened_on_white_as_for_the_vision_tower() -> None:
    rgba = Image.new("RGBA", (600, 400), (0, 0, 0, 0))  # transparent black: white once flattened
    rgba.paste((200, 0, 0, 255), (0, 0, 300, 400))  # opaque red on the left half
    data = _encode(rgba, "PNG")
    for thumb in (
        _webp(thumbnail_from_bytes(data, LIMITS, 256)),
        _webp(thumbnail_of(rgba, 256)),
        _webp(prepare_image_with_size(data, SPEC, thumbnail=256)[2] or b""),
    ):
        assert thumb.size == (256, 171)
        pixels = np.asarray(thumb, dtype=int)
        assert np.abs(pixels[:, 200:] - 255).max() <= 3  # white, not black
        assert np.abs(pixels[:, :100] - (200, 0, 0)).mean() < 6


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, I am not a picture\n" * 10, "not an image"),
        (_encode(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG")[:1500], "truncated"),
    ],
)
def test_bad_bytes_are_an_image_error(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        thumbnail_from_bytes(data, LIMITS, 256)


def test_the_decode_limits_apply() -> None:
    data = _encode(_photo(2000, 1000), "PNG")
    with pytest.raises(ImageError, match="too large"):
        thumbnail_from_bytes(data, DecodeLimits(1000, 64_000_000, 500.0), 256)
    with pytest.raises(ImageError, match=r"bomb|pixels"):
        thumbnail_from_bytes(data, DecodeLimits(50 << 20, 1_000_000, 500.0), 256)


def test_a_size_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        thumbnail_of(_photo(64, 64), 0)
    with pytest.raises(ValueError, match="positive"):
        thumbnail_from_bytes(b"x", LIMITS, -1)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize(
    ("fmt", "size"), [("JPEG", (4000, 3000)), ("PNG", (2400, 1800)), ("PNG", (640, 480))]
)
def test_the_decode_path_adds_a_thumbnail_and_leaves_the_vision_input_bit_identical(
    fmt: str, size: tuple[int, int], exact: bool
) -> None:
    data = _encode(_photo(*size), fmt, quality=92)
    pixels, upright, none = prepare_image_with_size(data, SPEC, exact=exact)
    again, upright_again, thumb = prepare_image_with_size(data, SPEC, exact=exact, thumbnail=256)
    assert none is None and thumb is not None
    assert upright == upright_again == size
    np.testing.assert_array_equal(again, pixels)
    made = _webp(thumb)
    reference = _webp(thumbnail_of(_photo(*size), 256))  # from the full-size original
    assert made.size == reference.size == (256, round(256 * size[1] / size[0]))
    assert _diff(made, reference) < 4  # from the reduced decode, it looks the same
