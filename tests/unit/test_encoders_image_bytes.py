"""Encoded images sent to Triton's bytes ensemble, without a server.

Which images go as bytes, the request each becomes, the encoder's switch, and what comes back when
the ensemble refuses an image. Triton is replaced by a recording client here: the local tritonserver
cannot load the DALI model, so no test in this repository sends bytes to a real ensemble.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

from mediasearch.encoders import FakeEncoder, TritonClientOptions, TritonEncoder
from mediasearch.encoders.base import Encoder
from mediasearch.encoders.image_bytes import bytes_request, probe_image
from mediasearch.errors import ImageError
from mediasearch.export.dali import bytes_specs
from mediasearch.model_manifest import MANIFEST_SUFFIX, TOKENIZER_SUFFIX, ModelManifest, ServingSpec
from mediasearch.preprocess.image import DecodeLimits
from mediasearch.settings import load_settings

LIMITS = DecodeLimits(max_bytes=1 << 20, max_pixels=4_000_000, max_aspect=50.0)
CORPUS = Path(__file__).parents[1] / "fuzz_corpus" / "image"


def _encoded(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(size: tuple[int, int] = (64, 48), fmt: str = "JPEG", mode: str = "RGB", **kw: Any) -> bytes:
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    return _encoded(img, fmt, **kw)


@pytest.mark.parametrize(
    ("data", "gpu"),
    [
        (_photo(), True),
        (_photo(mode="L"), True),
        (_photo(fmt="PNG"), True),
        (_photo(fmt="PNG", mode="L"), True),
        (_photo(fmt="PNG", transparency=(0, 0, 0)), False),  # transparency: composited onto white here
        (_photo(fmt="PNG", mode="RGBA"), False),
        (_photo(fmt="PNG", mode="P"), False),
        (_photo(mode="CMYK"), False),
        (_photo(fmt="GIF"), False),
        (_photo(fmt="WEBP"), False),
        ((CORPUS / "gray16.png").read_bytes(), False),
    ],
    ids=[
        "jpeg",
        "jpeg-gray",
        "png",
        "png-gray",
        "png-trns",
        "rgba",
        "palette",
        "cmyk",
        "gif",
        "webp",
        "16bit",
    ],
)
def test_probe_sends_plain_jpeg_and_png_to_the_gpu_and_keeps_the_rest_here(data: bytes, gpu: bool) -> None:
    assert probe_image(data, LIMITS).gpu is gpu


def test_probe_reports_the_upright_size_as_the_decoders_apply_exif() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise
    assert probe_image(_photo((64, 48)), LIMITS).size == (64, 48)
    assert probe_image(_photo((64, 48), exif=exif), LIMITS).size == (48, 64)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty"),
        (b"\xff\xd8" + b"\x00" * (2 << 20), "too large"),
        (_encoded(Image.new("L", (2500, 2000)), "PNG"), "decompression bomb"),
        (_photo((500, 5), fmt="PNG"), "aspect"),
        (b"GIF89a this is not an image at all", "cannot decode"),
    ],
    ids=["empty", "bytes", "pixels", "aspect", "garbage"],
)
def test_probe_refuses_from_the_header_what_the_cpu_path_refuses(data: bytes, says: str) -> None:
    with pytest.raises(ImageError, match=says):
        probe_image(data, LIMITS)


def test_bytes_request_is_one_uint8_row_holding_the_file_unpadded() -> None:
    _, ensemble = bytes_specs("clip", _vision_spec())
    data = _photo()
    tensor = bytes_request(ensemble, data)
    assert (tensor.name(), tensor.datatype(), list(tensor.shape())) == (
        "IMAGE_BYTES",
        "UINT8",
        [1, len(data)],
    )
    assert tensor._get_content() == data


# -- the encoder's switch and the bytes path ---------------------------------------------------------
def _vision_spec() -> ServingSpec:
    from mediasearch.export.pipeline import serving_specs

    return serving_specs("clip", 16, 32)[1]


@pytest.fixture
def bytes_repository(tiny_repository: Path, tmp_path: Path) -> Path:
    """The tiny export's manifest as a ``--dali`` export writes it (what encoders read of it)."""
    manifest = ModelManifest.load(tiny_repository, "clip")
    _, ensemble = bytes_specs("clip", manifest.vision)
    raw = json.loads(manifest.to_json()) | {"vision_bytes": asdict(ensemble)}
    (tmp_path / f"clip{MANIFEST_SUFFIX}").write_text(json.dumps(raw))
    shutil.copy(tiny_repository / f"clip{TOKENIZER_SUFFIX}", tmp_path)
    return tmp_path


def _triton(repository: Path, image_bytes: bool) -> TritonEncoder:
    settings = load_settings(model_repository=repository, triton_image_bytes=image_bytes)
    return TritonEncoder(repository, options=TritonClientOptions.from_settings(settings))


def test_only_a_triton_encoder_with_the_setting_and_the_ensemble_accepts_encoded_images(
    tiny_repository: Path, bytes_repository: Path
) -> None:
    assert load_settings().triton_image_bytes is False
    assert FakeEncoder().accepts_encoded_images is False
    assert _triton(tiny_repository, image_bytes=True).accepts_encoded_images is False  # not exported
    assert _triton(bytes_repository, image_bytes=False).accepts_encoded_images is False  # not enabled
    assert _triton(bytes_repository, image_bytes=True).accepts_encoded_images is True


class _Result:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self, name: str) -> np.ndarray:
        assert name == self.name
        return self.array


class _RecordingTriton:
    """Answers ``infer`` as Triton would: the ensemble with row 0, the tower with row 1 of an
    identity, and refuses the files in ``refused`` as DALI refuses a batch holding a corrupt file."""

    def __init__(self, dim: int, refused: set[bytes]) -> None:
        self.dim, self.refused = dim, refused
        self.calls: list[tuple[str, str, list[int]]] = []

    async def infer(self, model: str, inputs: list[Any], outputs: Any, client_timeout: float) -> _Result:
        (tensor,) = inputs
        self.calls.append((model, tensor.datatype(), list(tensor.shape())))
        if model.endswith("_bytes") and tensor._get_content() in self.refused:
            raise InferenceServerException(msg="DALI: decoding failed", status="StatusCode.INTERNAL")
        rows = int(tensor.shape()[0])
        vector = np.eye(self.dim, dtype=np.float32)[0 if model.endswith("_bytes") else 1]
        return _Result("embedding", np.tile(vector, (rows, 1)))

    async def close(self) -> None:
        pass


def _encode(encoder: TritonEncoder, client: _RecordingTriton, images: list[bytes]) -> Any:
    async def body() -> Any:
        await Encoder.start(encoder)  # the decode pool only: no channel to a server
        encoder._client = client  # type: ignore[assignment]
        try:
            return await encoder.encode_images(images)
        finally:
            await encoder.close()

    return asyncio.run(body())


def test_encode_images_sends_jpeg_and_png_files_to_the_ensemble_and_decodes_the_rest_here(
    bytes_repository: Path,
) -> None:
    encoder = _triton(bytes_repository, image_bytes=True)
    client = _RecordingTriton(encoder.embedding_dim, refused=set())
    images = [_photo(), _photo(fmt="GIF"), _photo(fmt="PNG"), b"not an image"]
    out = _encode(encoder, client, images)
    assert [e is None for e in out.errors] == [True, True, True, False]
    assert "cannot decode" in str(out.errors[3])
    assert out.vectors[:3].argmax(axis=1).tolist() == [0, 1, 0]  # 0: from the bytes, 1: from pixels
    assert not out.vectors[3].any()
    crop = encoder.image_spec.crop
    assert sorted(client.calls) == [
        ("clip_vision", "UINT8", [1, crop, crop, 3]),
        ("clip_vision_bytes", "UINT8", [1, len(images[0])]),
        ("clip_vision_bytes", "UINT8", [1, len(images[2])]),
    ]


def test_an_image_the_ensemble_refuses_is_decoded_here_getting_its_vector_or_its_error(
    bytes_repository: Path,
) -> None:
    encoder = _triton(bytes_repository, image_bytes=True)
    good, truncated = _photo(fmt="PNG"), _photo((256, 256), fmt="PNG")[:-400]
    client = _RecordingTriton(encoder.embedding_dim, refused={good, truncated})  # one bad batch
    out = _encode(encoder, client, [good, truncated, _photo()])
    assert out.errors[0] is None and out.vectors[0].argmax() == 1  # its batch-mate's failure: pixels
    assert isinstance(out.errors[1], ImageError) and not out.vectors[1].any()
    assert out.errors[2] is None and out.vectors[2].argmax() == 0


def test_without_the_switch_encode_images_decodes_everything_here(tiny_repository: Path) -> None:
    encoder = _triton(tiny_repository, image_bytes=True)  # enabled, but the export has no ensemble
    client = _RecordingTriton(encoder.embedding_dim, refused=set())
    out = _encode(encoder, client, [_photo(), _photo(fmt="PNG")])
    assert out.vectors.argmax(axis=1).tolist() == [1, 1]
    assert {model for model, _, _ in client.calls} == {"clip_vision"}
