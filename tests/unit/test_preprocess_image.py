"""The shared image preprocessing against transformers' CLIP image processor (the reference)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from mediasearch.errors import ImageError
from mediasearch.preprocess import ImageSpec, decode_image, normalize, prepare_image

SPEC = ImageSpec(
    resize=224, crop=224, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)
)
TOLERANCE = 0.02  # measured: 0.0 on every case below (same PIL bicubic resize, same crop)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photos() -> dict[str, bytes]:
    from skimage import data

    photos = {name: getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
    cases = {f"{k}.jpg": _encode(Image.fromarray(v), "JPEG", quality=90) for k, v in photos.items()}
    cases["camera_gray.png"] = _encode(Image.fromarray(data.camera()), "PNG")
    cases["1x1.png"] = _encode(Image.new("RGB", (1, 1), (200, 10, 30)), "PNG")
    rng = np.random.default_rng(0)
    cases["10000x20.png"] = _encode(
        Image.fromarray(rng.integers(0, 255, (20, 10000, 3), dtype=np.uint8)), "PNG"
    )
    rgba = Image.fromarray(photos["coffee"]).convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 255, rgba.size[::-1], dtype=np.uint8)))
    cases["alpha.png"] = _encode(rgba, "PNG")
    cases["cmyk.jpg"] = _encode(Image.fromarray(photos["rocket"]).convert("CMYK"), "JPEG", quality=90)
    cases["palette.png"] = _encode(Image.fromarray(photos["chelsea"]).convert("P"), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    cases["exif_rotated.jpg"] = _encode(Image.fromarray(photos["astronaut"][:, :300]), "JPEG", exif=exif)
    return cases


@pytest.fixture(scope="module")
def reference():  # type: ignore[no-untyped-def]
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil()


@pytest.mark.parametrize("name", sorted(_photos()))
def test_prepare_image_matches_clip_image_processor_on_photos_and_edge_cases(
    name: str, reference: object
) -> None:
    data = _photos()[name]
    ours = normalize(prepare_image(data, SPEC), SPEC.mean, SPEC.std)
    ref_img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))  # the reference ignores EXIF
    ref = reference(images=ref_img, return_tensors="np")["pixel_values"][0]  # type: ignore[operator]
    assert ours.shape == ref.shape == (3, 224, 224)
    assert float(np.abs(ours - ref).max()) <= TOLERANCE


def test_decode_image_applies_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    img = decode_image(_encode(Image.new("RGB", (40, 10)), "JPEG", exif=exif))
    assert img.size == (10, 40)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16"])
def test_decode_image_returns_rgb_when_mode_is(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    assert decode_image(_encode(Image.new(mode, (8, 8)), fmt)).mode == "RGB"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is a text file, not a picture", "not an image"),
        (_encode(Image.new("RGB", (64, 64), "red"), "JPEG")[:200], "truncated"),
        (_encode(Image.new("RGB", (64, 64), "red"), "PNG")[:60], "truncated"),
    ],
)
def test_decode_image_refuses_bad_input_with_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_decode_image_refuses_decompression_bomb_before_decoding() -> None:
    bomb = _encode(Image.new("1", (12000, 12000)), "PNG")  # ~20 kB of PNG, 144 Mpx once decoded
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(bomb, max_pixels=64_000_000)


def test_decode_image_refuses_oversized_bytes() -> None:
    with pytest.raises(ImageError, match="too large"):
        decode_image(b"\xff" * 1000, max_bytes=999)


def test_prepare_image_output_is_uint8_hwc_crop() -> None:
    out = prepare_image(_encode(Image.new("RGB", (300, 200), "blue"), "PNG"), SPEC)
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3)
    assert tuple(out[100, 100]) == (0, 0, 255)
