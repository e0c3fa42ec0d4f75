"""Encoders against the real tritonserver: parity with PyTorch, batching invariance, errors.

Triton (CPU flavour, dynamic batching) = LocalEncoder (in-process ONNX Runtime) = PyTorch, within
1e-5, on texts of varied length and on real photos, whatever the batch-mates.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mediasearch.dev.processes import free_port
from mediasearch.dev.triton import LocalTriton
from mediasearch.encoders import Encoder, ImageEmbeddings, LocalEncoder, TritonClientOptions, TritonEncoder
from mediasearch.errors import DeadlineExceeded, ImageError, ManifestMismatch, Unavailable
from mediasearch.model_manifest import ModelManifest
from mediasearch.preprocess import TextTokenizer, normalize, prepare_image

TOLERANCE = 1e-5
QUERIES = [
    "dog",
    "a photo of a cat",
    "an astronaut in a white suit holding a helmet next to the american flag",
    "a cup of coffee on a saucer, seen from above, on a wooden table in the morning sun",
    "rocket launch",
    " ".join(["very long query"] * 40),  # longer than the context: truncated, end token kept
]


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """scikit-image's sample photos, as JPEG and as PNG bytes."""
    from PIL import Image
    from skimage import data

    out = []
    for name, fmt in (("astronaut", "JPEG"), ("chelsea", "PNG"), ("coffee", "JPEG"), ("rocket", "PNG")):
        buf = io.BytesIO()
        Image.fromarray(getattr(data, name)()).save(buf, fmt)
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def torch_clip(tiny_checkpoint: Path) -> Any:
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(tiny_checkpoint)).eval()


def _unit(x: Any) -> np.ndarray:
    x = getattr(x, "pooler_output", x)
    return (x / x.norm(dim=-1, keepdim=True)).detach().numpy()


def torch_texts(model: Any, repository: Path, texts: list[str]) -> np.ndarray:
    import torch

    m = ModelManifest.load(repository)
    tok = TextTokenizer.from_file(m.tokenizer_path(repository), m.context_length, m.pad_id)
    with torch.no_grad():  # one query at a time, unpadded: the reference for every batch shape
        return np.concatenate(
            [_unit(model.get_text_features(input_ids=torch.tensor([tok.encode(t)]))) for t in texts]
        )


def torch_images(model: Any, repository: Path, images: list[bytes]) -> np.ndarray:
    import torch

    spec = ModelManifest.load(repository).image
    pixels = np.stack([prepare_image(b, spec) for b in images])
    with torch.no_grad():
        return _unit(
            model.get_image_features(pixel_values=torch.from_numpy(normalize(pixels, spec.mean, spec.std)))
        )


def both(triton: LocalTriton, repository: Path, **triton_options: Any) -> Iterator[Encoder]:
    yield LocalEncoder(repository)
    yield TritonEncoder(
        repository, options=TritonClientOptions.defaults(url=triton.grpc_url, **triton_options)
    )


def run(encoder: Encoder, body: Callable[[Any], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with encoder as enc:
            return await body(enc)

    return asyncio.run(go())


def test_text_embeddings_equal_pytorch_on_triton_and_locally(
    triton_server: LocalTriton, tiny_repository: Path, torch_clip: Any
) -> None:
    want = torch_texts(torch_clip, tiny_repository, QUERIES)
    for encoder in both(triton_server, tiny_repository):
        got = run(encoder, lambda enc: enc.encode_texts(QUERIES))
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.abs(got - want).max() <= TOLERANCE, type(encoder).__name__


def test_photo_embeddings_equal_pytorch_on_triton_and_locally(
    triton_server: LocalTriton, tiny_repository: Path, torch_clip: Any, photos: list[bytes]
) -> None:
    want = torch_images(torch_clip, tiny_repository, photos)
    for encoder in both(triton_server, tiny_repository):
        got = run(encoder, lambda enc: enc.encode_images(photos)).raise_first()
        assert np.abs(got - want).max() <= TOLERANCE, type(encoder).__name__
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("client_batching", [True, False])
def test_text_embedding_does_not_depend_on_its_batch_mates(
    triton_server: LocalTriton, tiny_repository: Path, client_batching: bool
) -> None:
    async def body(enc: Encoder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        alone = np.concatenate([await enc.encode_texts([q]) for q in QUERIES])
        together = (await enc.encode_texts(QUERIES[::-1]))[::-1]
        concurrent = np.concatenate(await asyncio.gather(*(enc.encode_texts([q]) for q in QUERIES)))
        return alone, together, concurrent

    for encoder in both(triton_server, tiny_repository, client_batching=client_batching):
        alone, together, concurrent = run(encoder, body)
        assert np.abs(alone - together).max() <= TOLERANCE
        assert np.abs(alone - concurrent).max() <= TOLERANCE


def test_photo_embedding_does_not_depend_on_its_batch_mates(
    triton_server: LocalTriton, tiny_repository: Path, photos: list[bytes]
) -> None:
    async def body(enc: Encoder) -> tuple[np.ndarray, np.ndarray]:
        alone = np.concatenate([(await enc.encode_images([p])).raise_first() for p in photos])
        concurrent = await asyncio.gather(*(enc.encode_images([p, *photos]) for p in photos))
        return alone, np.stack([r.raise_first()[0] for r in concurrent])

    for encoder in both(triton_server, tiny_repository):
        alone, mixed = run(encoder, body)
        assert np.abs(alone - mixed).max() <= TOLERANCE


def test_inputs_larger_than_max_batch_size_are_split_and_keep_their_order(
    triton_server: LocalTriton, tiny_repository: Path, photos: list[bytes]
) -> None:
    manifest = ModelManifest.load(tiny_repository)
    texts = [
        f"photo number {i} of a {'very ' * (i % 9)}red car" for i in range(manifest.text.max_batch_size + 6)
    ]
    images = (photos * 20)[: manifest.vision.max_batch_size + 3]

    async def body(enc: Encoder) -> tuple[np.ndarray, np.ndarray]:
        return await enc.encode_texts(texts), (await enc.encode_images(images)).raise_first()

    local_t, local_i = run(LocalEncoder(tiny_repository), body)
    options = TritonClientOptions.defaults(url=triton_server.grpc_url, client_batching=False)
    triton_t, triton_i = run(TritonEncoder(tiny_repository, options=options), body)
    assert np.abs(local_t - triton_t).max() <= TOLERANCE
    assert np.abs(local_i - triton_i).max() <= TOLERANCE


def test_corrupt_image_fails_only_itself_in_a_batch_on_triton_and_locally(
    triton_server: LocalTriton, tiny_repository: Path, photos: list[bytes]
) -> None:
    batch = [photos[0], photos[1][:200], b"GIF89a but not really", photos[2]]

    async def body(enc: Encoder) -> tuple[np.ndarray, ImageEmbeddings]:
        alone = (await enc.encode_images([photos[0], photos[2]])).raise_first()
        return alone, await enc.encode_images(batch)

    for encoder in both(triton_server, tiny_repository):
        alone, result = run(encoder, body)
        assert result.ok.tolist() == [True, False, False, True]
        assert isinstance(result.errors[1], ImageError) and isinstance(result.errors[2], ImageError)
        assert np.abs(result.vectors[[0, 3]] - alone).max() <= TOLERANCE


# -- errors ----------------------------------------------------------------------------------


def _edited_copy(repository: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """The manifest and tokenizer (all a Triton client reads) with the manifest edited."""
    copy = tmp_path / "repository"
    copy.mkdir()
    shutil.copy(repository / "clip.tokenizer.json", copy)
    raw = json.loads((repository / "clip.manifest.json").read_text())
    edit(raw)
    (copy / "clip.manifest.json").write_text(json.dumps(raw))
    return copy


def test_triton_encoder_raises_unavailable_naming_the_address_when_triton_is_down(
    tiny_repository: Path,
) -> None:
    url = f"127.0.0.1:{free_port()}"
    encoder = TritonEncoder(
        tiny_repository, options=TritonClientOptions.defaults(url=url, retries=2, backoff_s=0.01)
    )
    with pytest.raises(Unavailable, match=url):
        asyncio.run(encoder.start())


def test_triton_encoder_raises_manifest_mismatch_when_the_served_version_differs(
    triton_server: LocalTriton, tiny_repository: Path, tmp_path: Path
) -> None:
    served = ModelManifest.load(tiny_repository).version
    copy = _edited_copy(tiny_repository, tmp_path, lambda raw: raw.update(version="clip-000000000000"))
    encoder = TritonEncoder(copy, options=TritonClientOptions.defaults(url=triton_server.grpc_url))
    with pytest.raises(ManifestMismatch, match=served) as caught:
        asyncio.run(encoder.start())
    assert "clip-000000000000" in str(caught.value) and triton_server.grpc_url in str(caught.value)


def test_triton_encoder_raises_manifest_mismatch_when_the_served_tensors_differ(
    triton_server: LocalTriton, tiny_repository: Path, tmp_path: Path
) -> None:
    def widen(raw: dict[str, Any]) -> None:
        raw["text"]["outputs"][0]["dims"] = [512]

    encoder = TritonEncoder(
        _edited_copy(tiny_repository, tmp_path, widen),
        options=TritonClientOptions.defaults(url=triton_server.grpc_url),
    )
    with pytest.raises(ManifestMismatch, match=r"embedding:FP32\[16\]"):
        asyncio.run(encoder.start())


def test_triton_encoder_raises_unavailable_naming_the_model_when_it_is_not_loaded(
    triton_server: LocalTriton, tiny_repository: Path, tmp_path: Path
) -> None:
    copy = _edited_copy(tiny_repository, tmp_path, lambda raw: raw["text"].update(model="other_text"))
    encoder = TritonEncoder(copy, options=TritonClientOptions.defaults(url=triton_server.grpc_url))
    with pytest.raises(Unavailable, match="other_text"):
        asyncio.run(encoder.start())


@pytest.mark.parametrize("client_batching", [True, False])
def test_triton_encoder_raises_deadline_exceeded_when_the_deadline_is_too_short(
    triton_server: LocalTriton, tiny_repository: Path, client_batching: bool
) -> None:
    options = TritonClientOptions.defaults(url=triton_server.grpc_url, client_batching=client_batching)

    async def body() -> None:
        async with TritonEncoder(tiny_repository, options=options) as enc:
            assert isinstance(enc, TritonEncoder)
            enc.options = replace(enc.options, timeout_s=1e-4)
            with pytest.raises(DeadlineExceeded, match=triton_server.grpc_url):
                await enc.encode_texts(["too late"])
            enc.options = options  # the encoder is still usable afterwards
            assert (await enc.encode_texts(["in time"])).shape == (1, enc.embedding_dim)

    asyncio.run(body())
